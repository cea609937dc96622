//! `zerofn`: the command line of the zerofn platform.
//!
//! ```text
//! zerofn dlq ls [--fn NAME] [--since 1h] [--limit N] [--json]
//! zerofn dlq show ID [--json]
//! zerofn dlq replay (ID | --all [--fn NAME] [--since 1h]) [--rate N/s] [--dry-run] (--dapr URL | --sink URL)
//! ```
//! Dead letters are read from the same store the functions use (`--store`, or `ZEROFN_STORE`).

mod dlq;

use clap::{Parser, Subcommand};

/// The zerofn command line.
#[derive(Debug, Parser)]
#[command(
    name = "zerofn",
    version,
    about = "zerofn: scale-to-zero functions with exactly-once effects"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters: list, inspect and replay events that could not be processed.
    Dlq(dlq::Dlq),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dlq(dlq) => dlq.run(&mut std::io::stdout()).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerofn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
