//! `zerofn`: the command line of the zerofn platform.
//!
//! ```text
//! zerofn dev [--fn DIR | --fn TOML=BINARY]... [--listen 127.0.0.1:8080] [--gateway-config FILE] [--chaos kill-replica|slow|drop-publish]
//! zerofn status [--gateway URL] [--json]
//! zerofn gateway --config FILE --function NAME=URL... [--dapr-http-port 3500] [--internal-listen ADDR]
//! zerofn values (functions/NAME [--image REPOSITORY:TAG] | --platform)
//! zerofn new NAME [--kind event|http] [--description TEXT]
//! zerofn demo [--gateway URL]
//! zerofn scaler [--listen 0.0.0.0:9600] [--watch-every 100ms] [--kafka-setting KEY=VALUE]...
//! zerofn dlq ls [--fn NAME] [--since 1h] [--limit N] [--json]
//! zerofn dlq show ID [--json]
//! zerofn dlq replay (ID | --all [--fn NAME] [--since 1h]) [--rate N/s] [--dry-run] (--dapr URL | --sink URL)
//! ```
//! Dead letters are read from the same store the functions use (`--store`, or `ZEROFN_STORE`).

mod cluster;
mod demo;
mod dev;
mod dlq;
mod gateway;
mod kafka;
mod lag;
mod new;
mod scaler;
mod status;
mod values;

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
    /// The local engine: functions scaled 0..N behind the gateway, with production semantics.
    Dev(dev::Dev),
    /// What the local engine is doing: replicas, lag, processed, retries, dead letters.
    Status(status::Status),
    /// The API gateway in a cluster (publishes through Dapr, proxies to Knative Services).
    Gateway(cluster::Gateway),
    /// Helm values generated from function.toml (for helm/zerofn-function, or --platform).
    Values(values::Values),
    /// A new function crate: function.toml, a handler with its unit tests, a README.
    New(new::New),
    /// The finance companion with a month of data, through a running engine's gateway.
    Demo(demo::Demo),
    /// A KEDA external push scaler for Kafka consumer-group lag (trigger type external-push).
    Scaler(scaler::Scaler),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dlq(dlq) => dlq.run(&mut std::io::stdout()).await,
        Command::Dev(dev) => dev.run().await,
        Command::Status(status) => status.run(&mut std::io::stdout()).await,
        Command::Gateway(gateway) => gateway.run().await,
        Command::Values(values) => values.run(&mut std::io::stdout()),
        Command::New(new) => new.run(&mut std::io::stdout()),
        Command::Demo(demo) => demo.run(&mut std::io::stdout()).await,
        Command::Scaler(scaler) => scaler.run().await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zerofn: {e:#}");
            // A configuration that cannot be used: EX_CONFIG-style 64, as the functions exit.
            if e.downcast_ref::<gateway::config::ConfigError>().is_some() {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
