//! `mqlink`: the link agent's command line. See the crate docs of `mqlink`
//! (linker/src/lib.rs) for what each command does.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mqlink::cli::{CertsAction, Cli, Command};
use mqlink_topology::RegionName;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => mqlink::check::run(&args, &mut std::io::stdout().lock()),
        Command::Certs { action } => certs(action).map(|()| true),
        Command::Run { config } => run(&config).map(|()| true),
        Command::Demo {
            regions,
            duration,
            broker,
        } => demo(regions, &duration, broker).map(|()| true),
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

fn certs(action: CertsAction) -> anyhow::Result<()> {
    match action {
        CertsAction::Init { out } => {
            let (cert, key) = mqlink::certs::init(&out)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsAction::Issue { region, out } => {
            let region = RegionName::new(&region)?;
            let (cert, key) = mqlink::certs::issue(&region, &out)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
    }
    Ok(())
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rumqttc=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn demo(
    regions: usize,
    duration: &str,
    broker: mqlink::federation::BrokerKind,
) -> anyhow::Result<()> {
    let duration = match duration.trim() {
        "0" => None,
        d => Some(
            mqlink_config::units::parse_duration(d).map_err(|e| anyhow::anyhow!("--for: {e}"))?,
        ),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,quinn=error,rumqttc=error,mqtt5=error")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(mqlink::demo::run(mqlink::demo::DemoOptions {
        regions,
        duration,
        broker,
    }))
    .map(|_| ())
}

fn run(config: &std::path::Path) -> anyhow::Result<()> {
    logging();
    let cfg = mqlink_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        mqlink::metrics::install(cfg.listen.metrics)?;
        let agent = mqlink::run::start(&cfg).await?;
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        tracing::info!("shutting down");
        agent.shutdown().await;
        Ok(())
    })
}
