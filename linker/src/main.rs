//! `mqlink`: the link agent's command line. See the crate docs of `mqlink`
//! (linker/src/lib.rs) for what each command does.

use std::process::ExitCode;

use clap::Parser;
use mqlink::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => mqlink::check::run(&args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mqlink: {e:#}");
            ExitCode::from(2)
        }
    }
}
