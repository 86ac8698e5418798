//! The command line: `serve` (the default), `token` to mint a development token, `keys` to show
//! the development keys. Settings come from flags or environment variables (see [`Settings`]).

use std::io::Write;
use std::process::ExitCode;
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
    },
    /// Show the development-mode keys (generating them if they do not exist yet).
    Keys,
    /// Measure a running server: N WebSocket connections, M publishes (see docs/performance.md).
    Bench(crate::bench::BenchArgs),
    /// Measure a running server's outbox consumer (docs/outbox.md).
    BenchOutbox(crate::bench::outbox::OutboxBenchArgs),
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
    let config = Config::load(cli.settings).map_err(|e| e.to_string())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Token { account, user, ttl } => {
            let account = AccountId::new(&account).map_err(|e| format!("--account {e}"))?;
            let user = UserId::new(&user).map_err(|e| format!("--user {e}"))?;
            let token = auth::mint(&config.jwt, &account, &user, ttl).map_err(|e| e.to_string())?;
            print(&token)
        }
        Command::Keys => keys(&config),
        Command::Bench(args) => print(&crate::bench::run(&config, args)?),
        Command::BenchOutbox(args) => print(&crate::bench::outbox::run(&config, args)?),
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
