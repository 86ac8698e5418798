//! The command line: `serve` (the default), `token` to mint a development token, `keys` to show
//! the development keys, and `bench` / `bench-outbox`, which run the load tool — a binary of its
//! own, `switchboard-bench`, so the server links none of it. Settings come from flags or
//! environment variables (see [`Settings`]).

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command as Process, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, JwtKey, Settings};
use crate::ids::{AccountId, UserId};
use crate::{auth, logging, server};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A realtime engine: WebSocket sessions in per-account rooms, with persisted, sequenced events."
)]
pub struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a signed token for a user of an account, for trying Switchboard out.
    Token {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The channels it allows following (names and `prefix*` patterns, comma-separated).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
    },
    /// Show the development-mode keys (generating them if they do not exist yet).
    Keys,
    /// Measure a running server: N WebSocket connections, M publishes (see docs/performance.md);
    /// runs `switchboard-bench` with these arguments (`switchboard bench --help` shows them).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure a running server's outbox consumer (docs/outbox.md); runs `switchboard-bench outbox`.
    #[command(disable_help_flag = true)]
    BenchOutbox {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let load = move || Config::load(cli.settings).map_err(|e| e.to_string());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(load()?),
        Command::Token {
            account,
            user,
            ttl,
            channels,
        } => {
            let config = load()?;
            let account = AccountId::new(&account).map_err(|e| format!("--account {e}"))?;
            let user = UserId::new(&user).map_err(|e| format!("--user {e}"))?;
            let token = auth::mint_with_channels(&config.jwt, &account, &user, ttl, &channels)
                .map_err(|e| e.to_string())?;
            print(&token)
        }
        Command::Keys => keys(&load()?),
        Command::Bench { args } => bench(args),
        Command::BenchOutbox { mut args } => {
            args.insert(0, "outbox".into());
            bench(args)
        }
    }
}

/// Runs the load tool: `switchboard-bench` beside this binary (where `cargo build` puts both),
/// else on the `PATH`. It reads the same environment.
fn bench(args: Vec<OsString>) -> Result<(), String> {
    const TOOL: &str = "switchboard-bench";
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(TOOL))
        .filter(|path| path.is_file());
    let program = beside.map_or_else(|| OsString::from(TOOL), OsString::from);
    let status = Process::new(&program).args(args).status().map_err(|e| {
        format!(
            "cannot run {TOOL} ({e}); it is built beside switchboard by `cargo build --release`"
        )
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{TOOL} failed ({status})"))
    }
}

fn serve(config: Config) -> Result<(), String> {
    // Before the System starts its first thread.
    crate::scheduling::apply(config.scheduling);
    actix_web::rt::System::new().block_on(async move {
        let running = server::start(config).await.map_err(|e| e.to_string())?;
        let shutdown = running.shutdown();
        actix_web::rt::spawn(async move {
            stop_signal().await;
            shutdown.await;
        });
        running.server.await.map_err(|e| e.to_string())
    })
}

/// SIGTERM (a supervisor, a deploy) or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            log::error!("cannot listen for stop signals; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn keys(config: &Config) -> Result<(), String> {
    let Some(dev) = &config.dev_mode else {
        return print("not in development mode: the JWT key and the API key are configured");
    };
    let mut lines = vec![format!(
        "development keys, kept in {}",
        dev.keys_file.display()
    )];
    if let (true, JwtKey::Secret(secret)) = (dev.generated_jwt_secret, &config.jwt.key) {
        lines.push(format!("SWITCHBOARD_JWT_SECRET={}", secret.expose()));
    }
    if dev.generated_api_key {
        lines.push(format!("SWITCHBOARD_API_KEY={}", config.api_key.expose()));
    }
    print(&lines.join("\n"))
}

/// The CLI's output goes to stdout, so it can be captured (`TOKEN=$(switchboard token …)`).
fn print(text: &str) -> Result<(), String> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| e.to_string())
}
