//! Assembles the proxy process: one Pingora server whose services are the telemetry ingest,
//! the admin listener, the ranking rebuilder, and the client API relay.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, ServerTlsConfig};
use wes_proto::error_chain;

use crate::config::{Config, ListenConfig};
use crate::ingest::TelemetryService;
use crate::relay::Relay;
use crate::state::AppState;

/// How often the ranking is rebuilt even without new samples, so staleness shows.
pub const REBUILD_EVERY: Duration = Duration::from_millis(250);
/// Bursts of samples coalesce into at most one rebuild per this interval: 20 a second at most,
/// which keeps a 1,000-node fleet's rebuilds to a few percent of a core while a change still
/// routes within a twentieth of a second (reporters sample once a second).
pub const REBUILD_SPACING: Duration = Duration::from_millis(50);

/// Binds the listeners this process owns (so a busy port fails at start, loudly), then runs
/// until SIGTERM or SIGINT.
pub fn run(config: Config, config_path: std::path::PathBuf) -> anyhow::Result<()> {
    let telemetry = bind("telemetry", config.listen.telemetry)?;
    let admin = bind("admin", config.listen.admin)?;
    let telemetry_server = telemetry_server(&config.listen)?;
    // Scripts and tests read these lines to learn the ports when the config says port 0.
    println!(
        "wes-proxy telemetry listening on {}",
        telemetry.local_addr()?
    );
    println!("wes-proxy admin listening on {}", admin.local_addr()?);

    let api_addr = config.listen.api;
    let threads = config.listen.threads as usize;
    // Pingora binds the API listener itself, later, and retries a busy port instead of failing;
    // a trial bind now makes a taken port a clear error at start.
    drop(bind("api", api_addr)?);
    let usage = match &config.usage.log {
        Some(path) => crate::usage::Usage::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the usage log {} ([usage] log): {e}",
                path.display()
            )
        })?,
        None => crate::usage::Usage::in_memory(),
    };
    let state = AppState::with_usage(config, Some(config_path), usage);
    let conf = server_conf(threads);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(background_service(
        "telemetry ingest",
        IngestService {
            state: state.clone(),
            listener: Mutex::new(Some(telemetry)),
            server: telemetry_server,
        },
    ));
    server.add_service(background_service(
        "admin",
        AdminService {
            state: state.clone(),
            listener: Mutex::new(Some(admin)),
        },
    ));
    server.add_service(background_service(
        "ranking",
        RankingService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "health checks",
        HealthCheckService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "usage",
        UsageService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        SighupService {
            state: state.clone(),
        },
    ));

    let mut api = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Relay::new(state)?,
        "client API",
    );
    api.add_tcp(&api_addr.to_string());
    server.add_service(api);
    println!("wes-proxy api listening on {api_addr}");
    server.run_forever();
}

/// wes-proxy's Pingora settings (the overhead benchmark's bare Pingora uses the same).
pub fn server_conf(threads: usize) -> ServerConf {
    let pid = std::process::id();
    ServerConf {
        // Pingora's default waits 300 s before an idle shutdown even starts.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        threads,
        pid_file: std::env::temp_dir()
            .join(format!("wes-proxy-{pid}.pid"))
            .display()
            .to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("wes-proxy-{pid}.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    }
}

/// The telemetry listener's gRPC server, TLS included when configured. Built once at start (and
/// by `check-config`): a missing or malformed certificate or key stops the start with its path
/// named instead of surfacing as a log line later.
pub fn telemetry_server(listen: &ListenConfig) -> anyhow::Result<tonic::transport::Server> {
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    let Some(files) = &listen.telemetry_tls else {
        return Ok(server);
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the telemetry TLS {what} {}: {e}",
                path.display()
            )
        })
    };
    let identity = Identity::from_pem(read(&files.cert, "certificate")?, read(&files.key, "key")?);
    // Building the acceptor parses the certificate chain and the key.
    server
        .tls_config(ServerTlsConfig::new().identity(identity))
        .map_err(|e| {
            anyhow::anyhow!(
                "telemetry TLS ({}, {}): {}",
                files.cert.display(),
                files.key.display(),
                error_chain(&e)
            )
        })
}

fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen for {name} on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Takes the pre-bound listener into this service's runtime (once).
fn take_listener(slot: &Mutex<Option<TcpListener>>) -> Option<tokio::net::TcpListener> {
    let std_listener = slot.lock().ok()?.take()?;
    match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!("cannot adopt listener: {e}");
            None
        }
    }
}

async fn shutdown_signal(mut shutdown: ShutdownWatch) {
    let _ = shutdown.wait_for(|s| *s).await;
}

struct IngestService {
    state: Arc<AppState>,
    listener: Mutex<Option<TcpListener>>,
    server: tonic::transport::Server,
}

#[async_trait]
impl BackgroundService for IngestService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = take_listener(&self.listener) else {
            return;
        };
        let outcome = self
            .server
            .clone()
            .add_service(TelemetryService::server(self.state.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown_signal(shutdown),
            )
            .await;
        if let Err(e) = outcome {
            tracing::error!("telemetry ingest stopped: {e}");
        }
    }
}

struct AdminService {
    state: Arc<AppState>,
    listener: Mutex<Option<TcpListener>>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = take_listener(&self.listener) else {
            return;
        };
        let app = crate::admin::router(self.state.clone());
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal(shutdown))
            .await
        {
            tracing::error!("admin listener stopped: {e}");
        }
    }
}

struct RankingService {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for RankingService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = self.state.fleet.changed() => {}
                _ = tokio::time::sleep(REBUILD_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.state.rebuild_ranking();
            tokio::time::sleep(REBUILD_SPACING).await;
        }
    }
}

/// How often requests of silent nodes are settled and old ledger buckets folded.
const USAGE_SWEEP_EVERY: Duration = Duration::from_secs(5);

struct UsageService {
    state: Arc<AppState>,
}

/// Writes the usage log's pending lines when dropped: Pingora's shutdown may drop the
/// service's task before it is polled again, and a drop runs either way.
struct FlushOnDrop<'a>(&'a crate::usage::Usage);

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        self.0.flush();
    }
}

#[async_trait]
impl BackgroundService for UsageService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _flush = FlushOnDrop(&self.state.usage);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(USAGE_SWEEP_EVERY) => self.state.sweep_usage(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

struct HealthCheckService {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for HealthCheckService {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::fleet::health::run_checks(self.state.clone(), shutdown_signal(shutdown)).await;
    }
}

/// SIGHUP re-reads the config file, like `POST /reload`.
struct SighupService {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SighupService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP; use POST /reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => log_reload(&self.state, "SIGHUP"),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

pub fn log_reload(state: &AppState, trigger: &str) {
    match state.reload() {
        Ok(outcome) => tracing::info!(trigger, changed = outcome.changed, "config reloaded"),
        Err(errors) => tracing::error!(
            trigger,
            "config reload refused, the running config stays:\n{errors}"
        ),
    }
}
