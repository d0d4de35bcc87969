//! `wes-bench`: the tools behind `benchmarks/*.sh`. Each subcommand measures one thing and prints
//! markdown on stdout (progress on stderr); the scripts start the processes under test.

mod bare_pingora;
mod ingest;
mod latency;
mod load;
mod node;
mod procstat;
mod routing;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wes-bench", about = "WES router benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal fast Ollama-shaped node (prints `wes-bench node listening on ADDR`).
    Node {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value = "llama3.2:3b")]
        model: String,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Pingora with no logic of ours in front of one upstream: the floor under wes-proxy's
    /// overhead (prints `bare-pingora listening on ADDR`). Pingora binds the port itself, so
    /// `listen` must name one.
    BarePingora {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// One single-threaded runtime per thread instead of Tokio's work-stealing scheduler.
        #[arg(long)]
        no_steal: bool,
        /// Read each request body (retry-buffered) before choosing the peer, as wes-proxy must.
        #[arg(long)]
        read_body: bool,
    },
    /// Waits until the proxy's `/ranking?model=M` shows the node healthy.
    WaitHealthy {
        /// `http://HOST:PORT` of the admin listener.
        #[arg(long)]
        admin: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Proxy overhead: direct vs through each proxy, at a fixed rate, at saturation, and with
    /// thousands of streams held open.
    Latency(latency::LatencyArgs),
    /// Routing-decision and ranking-rebuild microbenchmarks against the wes-proxy library.
    Routing(routing::RoutingArgs),
    /// Prints a proxy config with many nodes and tokens, for the ingest benchmark.
    GenConfig(ingest::GenConfigArgs),
    /// Telemetry ingest from one gRPC stream per configured node.
    Ingest {
        #[command(flatten)]
        args: ingest::IngestArgs,
        /// Runtime worker threads for the streams (1 leaves the other core to the proxy).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wes-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(builder.enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    raise_fd_limit();
    match cli.command {
        Command::Node {
            listen,
            model,
            threads,
        } => runtime(threads)?.block_on(node::run(listen, &model)),
        Command::BarePingora {
            listen,
            upstream,
            threads,
            no_steal,
            read_body,
        } => bare_pingora::run(listen, upstream, threads, !no_steal, read_body),
        Command::WaitHealthy {
            admin,
            node,
            model,
            timeout,
        } => runtime(1)?.block_on(wait_healthy(&admin, &node, &model, timeout)),
        // One thread: the client must not take both cores from what it measures.
        Command::Latency(args) => runtime(1)?.block_on(latency::run(args)),
        Command::Routing(args) => routing::run(args),
        Command::GenConfig(args) => {
            print!("{}", ingest::gen_config(&args));
            Ok(())
        }
        Command::Ingest { args, threads } => runtime(threads)?.block_on(ingest::run(args)),
    }
}

async fn wait_healthy(admin: &str, node: &str, model: &str, limit: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{admin}/ranking?model={model}");
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(r) = http.get(&url).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            let entry = v["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["id"] == node))
                .cloned();
            if let Some(e) = entry {
                if e["healthy"] == true {
                    eprintln!(
                        "{node} healthy with {model} after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                last = e.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "{node} not healthy with {model} in /ranking after {limit:?}; last entry: {last}"
    ))
    .context("wait-healthy")
}

/// Thousands of sockets are the point of some runs: take the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
