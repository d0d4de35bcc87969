//! `wes-proxy --config PATH` runs the proxy; `wes-proxy check-config PATH` validates a file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wes_proxy::config::Config;

#[cfg(feature = "mimalloc")]
mod allocator;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wes-proxy",
    version,
    about = "Routes Ollama traffic to the most efficient healthy node"
)]
struct Cli {
    /// The proxy's TOML config.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file: exit 0 if valid, else 1 with each error and its line.
    CheckConfig { path: PathBuf },
}

fn main() -> ExitCode {
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    allocator::keep_off_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path }) => check_config(&path),
        None => {
            let Some(path) = cli.config else {
                eprintln!("wes-proxy: --config PATH is required (or: wes-proxy check-config PATH)");
                return ExitCode::from(2);
            };
            run(&path)
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            if let Err(e) = wes_proxy::server::telemetry_server(&config.listen) {
                eprintln!("{}: {e:#}", path.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} nodes, policy {})",
                path.display(),
                config.nodes.len(),
                config.routing.policy.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}:{e}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}:{e}", path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    match wes_proxy::server::run(config, path.to_path_buf()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wes-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
