//! `switchboard-bench`: the load tool, a binary of its own so that the server links none of its
//! clients or charts. `switchboard bench …` and `switchboard bench-outbox …` run it (found beside
//! the `switchboard` binary), as git and cargo run their external subcommands.
//!
//! - [`room`] — N sessions in one or more rooms (and channels), M publishes: deliveries per
//!   second, publish-to-receipt latency, lost, duplicated, cross-account and wrong-channel
//!   deliveries, the server's memory and CPU; [`chart`] draws a sweep of room sizes.
//! - [`sessions`] — the tool's clients, over WebSockets or Server-Sent Events.
//! - [`abuse`] — the same sessions with and without an attacker ([`attack`]) beside them.
//! - [`outbox`] — the outbox consumer's throughput and commit-to-delivery latency.
//! - [`proc`] — what the kernel says about the server process.
//!
//! It uses the server's library only for its settings, ids and token minting, so it reads the
//! same environment as the server it measures.

mod abuse;
mod attack;
mod chart;
mod outbox;
mod proc;
mod room;
mod sessions;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{Config, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Measures a running Switchboard server (docs/performance.md).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    room: room::BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a running server's outbox consumer (docs/outbox.md).
    Outbox(outbox::OutboxBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    switchboard::logging::init();
    let outcome = Config::load(cli.settings)
        .map_err(|e| e.to_string())
        .and_then(|config| match cli.command {
            Some(Command::Outbox(args)) => outbox::run(&config, args),
            None => room::run(&config, cli.room),
        });
    match outcome
        .and_then(|table| writeln!(std::io::stdout().lock(), "{table}").map_err(|e| e.to_string()))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
