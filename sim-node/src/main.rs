//! `wes-sim-node --listen 127.0.0.1:0 --profile apple-m2 [--models a,b] [--seed N]
//! [--time-scale F]`: binds, prints `wes-sim-node listening on ADDR` once on stdout (tests and
//! scripts wait for that line), serves until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use wes_sim_node::node::{Node, Settings};
use wes_sim_node::profile::{Profile, builtin_names};

#[derive(Debug, Parser)]
#[command(name = "wes-sim-node", version, about)]
struct Cli {
    /// Address to serve the Ollama API on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: SocketAddr,
    /// A built-in profile name or a path to a profile TOML file.
    #[arg(long, default_value = "apple-m2")]
    profile: String,
    /// Models this node holds, comma-separated (default: the profile's `default_models`).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Seeds the generated text, so runs repeat.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs the thermal model this many times faster than the wall clock, so a demo sees
    /// throttling in seconds. Token pacing and energy stay in real time.
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    time_scale: f64,
    /// Tokens in an answer when a request sets no `num_predict` / `max_tokens`.
    #[arg(long, default_value_t = 64)]
    default_tokens: u32,
    /// Lists the built-in profiles and exits.
    #[arg(long)]
    list_profiles: bool,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number > 0, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.list_profiles {
        for name in builtin_names() {
            println!("{name}");
        }
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let profile = Profile::load(&cli.profile).map_err(anyhow::Error::msg)?;
    let models = cli.models.unwrap_or_else(|| profile.default_models.clone());
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(profile = %profile.name, ?models, time_scale = cli.time_scale, "starting");
    let node = Node::new(Settings {
        profile,
        models,
        seed: cli.seed,
        time_scale: cli.time_scale,
        default_tokens: cli.default_tokens,
    });

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "wes-sim-node listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);

    wes_sim_node::serve(listener, node, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
