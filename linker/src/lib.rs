//! The mqlink agent binary's library half: the command-line interface and
//! the commands behind it, kept out of `main.rs` so tests can call them.
//!
//! # Layout
//!
//! - [`cli`]: the clap command line (`mqlink <command> ...`).
//! - [`check`]: `mqlink check`: validate one region file, or several as
//!   one deployment, with human or JSON output.
//!
//! # Status
//!
//! `check` works. `run`, `certs`, `demo`, `ctl` (issue #3), `simulate`
//! (issue #4) and `bench` come with later issues; the CLI does not list
//! them until they do something real.

pub mod check;
pub mod cli;
