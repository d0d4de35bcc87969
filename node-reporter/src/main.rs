//! `wes-reporter`: see docs/contract.md (Reporter CLI) for the flags.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use wes_reporter::config::{ReporterConfig, ReporterFlags};
use wes_reporter::sensor::select;
use wes_reporter::{agent, joules};

#[derive(Parser)]
#[command(
    name = "wes-reporter",
    version,
    about = "Streams this node's power, thermal state and models to WES proxies"
)]
struct Cli {
    #[command(flatten)]
    flags: ReporterFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the sensor, read it a few times one interval apart, print each reading as JSON, exit.
    ReadSensor {
        #[arg(long, default_value_t = 3)]
        count: u32,
    },
    /// Measure J/token on this node by the second seed's protocol (steady thermal state, idle
    /// baseline, a fixed workload run N times) and print the report as JSON; needs --ollama
    /// and the sensor flags.
    Joules(joules::Protocol),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Two worker threads at most: the reporter shares the node with the inference engine.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wes-reporter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Some(Command::ReadSensor { count }) => runtime.block_on(read_sensor(cli.flags, count)),
        Some(Command::Joules(mut protocol)) => {
            if let Some(interval) = cli.flags.interval {
                protocol.interval = interval;
            }
            runtime.block_on(measure_joules(cli.flags, protocol))
        }
        None => runtime.block_on(run(cli.flags)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wes-reporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: ReporterFlags) -> anyhow::Result<()> {
    let config = ReporterConfig::load(flags)?;
    let (sensor, why) = select::open(&config.sensor_settings())?;
    tracing::info!(node = %config.node_id, proxies = ?config.proxies, "sensor: {why}");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop_tx.send_replace(true);
        // A second signal, or a shutdown that hangs, ends the process at once.
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        std::process::exit(1);
    });
    agent::run(config, sensor, stop_rx).await
}

async fn read_sensor(flags: ReporterFlags, count: u32) -> anyhow::Result<()> {
    let settings = select::SensorSettings::from_flags(&flags)?;
    let interval = settings.interval;
    let (mut sensor, why) = select::open(&settings)?;
    eprintln!("sensor: {why}");
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let reading = sensor.read().await;
        println!("{}", select::reading_json(sensor.kind(), &reading));
    }
    Ok(())
}

async fn measure_joules(flags: ReporterFlags, protocol: joules::Protocol) -> anyhow::Result<()> {
    let ollama = flags
        .ollama
        .clone()
        .ok_or_else(|| anyhow::anyhow!("joules needs --ollama URL (the engine to measure)"))?;
    let mut settings = select::SensorSettings::from_flags(&flags)?;
    settings.interval = protocol.interval;
    let (mut sensor, why) = select::open(&settings)?;
    eprintln!("sensor: {why}");
    let client = wes_reporter::ollama::OllamaClient::new(ollama)?;
    let report = joules::run(sensor.as_mut(), &why, &client, &protocol).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on SIGTERM by default.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
