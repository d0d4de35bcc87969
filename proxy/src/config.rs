//! The proxy's TOML configuration (CONTRACT.md): schema, defaults, and validation whose every
//! error names its line, so `check-config` and a refused reload point at what to fix.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use wes_proto::ThermalState;

/// A validated configuration. Only [`Config::parse`] makes one, so holding one means every
/// check below passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: ListenConfig,
    pub routing: RoutingConfig,
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub health: HealthConfig,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Larger request bodies are refused with 413 before any node sees them.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub api: SocketAddr,
    pub telemetry: SocketAddr,
    pub admin: SocketAddr,
    /// Worker threads serving the client API (Pingora's `threads`). Telemetry ingest, admin,
    /// ranking and health checks run as background services on one thread each.
    pub threads: u32,
    /// When set, the telemetry listener speaks TLS only (reporters connect with `https://`).
    pub telemetry_tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    pub policy: String,
    /// Per-model policy overrides: model name → policy name.
    pub model_policy: BTreeMap<String, String>,
    /// Telemetry older than this makes a node unhealthy.
    pub stale_after: Duration,
    pub exclude_thermal: Vec<ThermalState>,
    /// Share of requests (0 to 0.5) sent to a not-yet-measured candidate, so it gets measured.
    pub exploration_share: f64,
    /// `top` keeps its previous node while that node is within this fraction of the best.
    pub hysteresis: f64,
    /// Time-to-first-token target of the `slo` policy.
    pub slo_ttft: Duration,
    /// How long a request waits for a free slot when every candidate is full.
    pub queue_timeout: Duration,
    /// Requests waiting at most; more get 503 at once.
    pub queue_limit: u32,
}

impl RoutingConfig {
    /// The policy for `model`: its override, else the default.
    pub fn policy_for(&self, model: &str) -> &str {
        self.model_policy
            .get(model)
            .map_or(self.policy.as_str(), String::as_str)
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            policy: "top".into(),
            model_policy: BTreeMap::new(),
            stale_after: Duration::from_secs(3),
            exclude_thermal: vec![ThermalState::Critical],
            exploration_share: 0.05,
            hysteresis: 0.05,
            slo_ttft: Duration::from_secs(2),
            queue_timeout: Duration::from_secs(10),
            queue_limit: 1024,
        }
    }
}

/// Node health beyond telemetry: active checks and the passive circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Whether the proxy asks nodes `GET /` at all; off leaves health to telemetry and the
    /// circuit breaker.
    pub active_checks: bool,
    /// How often each node's Ollama is asked `GET /`.
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// Failures in a row (relayed or checked) that open a node's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit keeps traffic away before one trial request.
    pub cooldown: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            active_checks: true,
            check_interval: Duration::from_secs(2),
            check_timeout: Duration::from_secs(1),
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Samples stamped further than this from the proxy's clock are refused.
    pub max_clock_skew: Duration,
    /// Watts above this are refused as absurd (a misread counter, a unit mix-up).
    pub max_watts: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub id: String,
    pub url: String,
    pub token: String,
    pub pue: f64,
    pub max_concurrency: u32,
}

/// Policies the router knows. Kept here so that a config naming any other is refused whole.
pub const POLICIES: &[&str] = &[
    "top",
    "weighted",
    "p2c",
    "slo",
    "round_robin",
    "least_connections",
];

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<RawListen>,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    api: Spanned<String>,
    telemetry: Spanned<String>,
    admin: Spanned<String>,
    threads: Option<Spanned<i64>>,
    telemetry_tls_cert: Option<Spanned<String>>,
    telemetry_tls_key: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    policy: Option<Spanned<String>>,
    model_policy: Option<BTreeMap<String, Spanned<String>>>,
    stale_after: Option<Spanned<String>>,
    exclude_thermal: Option<Spanned<Vec<String>>>,
    exploration_share: Option<Spanned<f64>>,
    hysteresis: Option<Spanned<f64>>,
    slo_ttft: Option<Spanned<String>>,
    queue_timeout: Option<Spanned<String>>,
    queue_limit: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    active_checks: Option<bool>,
    check_interval: Option<Spanned<String>>,
    check_timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<i64>>,
    cooldown: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    max_clock_skew: Option<Spanned<String>>,
    max_watts: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    max_body_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    url: Spanned<String>,
    token: Spanned<String>,
    pue: Option<Spanned<f64>>,
    max_concurrency: Option<Spanned<i64>>,
}

/// Collects errors against the file text, turning byte spans into line numbers.
struct Checker<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = Some(self.line_of(span));
        self.errors.push(ConfigError {
            line,
            message: message.into(),
        });
    }

    fn addr(&mut self, field: &str, value: &Spanned<String>) -> SocketAddr {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(e) => {
                self.error(
                    value.span(),
                    format!(
                        "listen.{field}: {:?} is not HOST:PORT ({e})",
                        value.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn duration(
        &mut self,
        field: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(value.span(), format!("{field} must be more than zero"));
                default
            }
            Err(e) => {
                self.error(
                    value.span(),
                    format!(
                        "{field}: {:?} is not a duration like \"500ms\", \"3s\", \"2m\" ({e})",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }
}

impl Checker<'_> {
    fn policy(&mut self, field: &str, value: &Spanned<String>) -> String {
        if POLICIES.contains(&value.get_ref().as_str()) {
            return value.get_ref().clone();
        }
        self.error(
            value.span(),
            format!(
                "{field}: unknown policy {:?}; known: {}",
                value.get_ref(),
                POLICIES.join(", ")
            ),
        );
        "top".to_owned()
    }

    fn fraction(
        &mut self,
        field: &str,
        value: Option<&Spanned<f64>>,
        max: f64,
        default: f64,
    ) -> f64 {
        match value {
            Some(v) if !(v.get_ref().is_finite() && (0.0..=max).contains(v.get_ref())) => {
                self.error(
                    v.span(),
                    format!("{field} {} must be between 0 and {max}", v.get_ref()),
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    fn count(&mut self, field: &str, value: Option<&Spanned<i64>>, max: i64, default: u32) -> u32 {
        match value {
            Some(v) if !(1..=max).contains(v.get_ref()) => {
                self.error(
                    v.span(),
                    format!("{field} {} must be between 1 and {max}", v.get_ref()),
                );
                default
            }
            Some(v) => u32::try_from(*v.get_ref()).unwrap_or(default),
            None => default,
        }
    }
}

/// One worker thread per CPU the process may use, as nginx's `worker_processes auto`.
fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
}

impl Config {
    /// Parses and validates a whole file. Either every check passes or nothing is returned, so a
    /// reload can never apply half a file.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            ConfigErrors(vec![ConfigError {
                line,
                message: e.message().trim().to_owned(),
            }])
        })?;
        let mut c = Checker {
            text,
            errors: Vec::new(),
        };

        let listen_raw = raw.listen.get_ref();
        let listen = ListenConfig {
            api: c.addr("api", &listen_raw.api),
            telemetry: c.addr("telemetry", &listen_raw.telemetry),
            admin: c.addr("admin", &listen_raw.admin),
            threads: c.count(
                "listen.threads",
                listen_raw.threads.as_ref(),
                1024,
                default_threads(),
            ),
            telemetry_tls: match (
                &listen_raw.telemetry_tls_cert,
                &listen_raw.telemetry_tls_key,
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.get_ref().into(),
                    key: key.get_ref().into(),
                }),
                (None, None) => None,
                (Some(one), None) | (None, Some(one)) => {
                    c.error(
                        one.span(),
                        "listen.telemetry_tls_cert and listen.telemetry_tls_key go together: set both or neither",
                    );
                    None
                }
            },
        };
        let mut ports = HashSet::new();
        for (name, addr) in [
            ("api", listen.api),
            ("telemetry", listen.telemetry),
            ("admin", listen.admin),
        ] {
            if addr.port() != 0 && !ports.insert(addr) {
                c.error(
                    raw.listen.span(),
                    format!("listen.{name}: {addr} is used by another listener"),
                );
            }
        }

        let defaults = RoutingConfig::default();
        let policy = match &raw.routing.policy {
            Some(p) => c.policy("routing.policy", p),
            None => defaults.policy.clone(),
        };
        let mut model_policy = BTreeMap::new();
        for (model, p) in raw.routing.model_policy.iter().flatten() {
            let name = c.policy(&format!("routing.model_policy.{model:?}"), p);
            model_policy.insert(model.clone(), name);
        }
        let exploration_share = c.fraction(
            "routing.exploration_share",
            raw.routing.exploration_share.as_ref(),
            0.5,
            defaults.exploration_share,
        );
        let hysteresis = c.fraction(
            "routing.hysteresis",
            raw.routing.hysteresis.as_ref(),
            1.0,
            defaults.hysteresis,
        );
        let slo_ttft = c.duration(
            "routing.slo_ttft",
            raw.routing.slo_ttft.as_ref(),
            defaults.slo_ttft,
        );
        let queue_timeout = c.duration(
            "routing.queue_timeout",
            raw.routing.queue_timeout.as_ref(),
            defaults.queue_timeout,
        );
        let queue_limit = c.count(
            "routing.queue_limit",
            raw.routing.queue_limit.as_ref(),
            1_000_000,
            defaults.queue_limit,
        );
        let health_defaults = HealthConfig::default();
        let health = HealthConfig {
            active_checks: raw
                .health
                .active_checks
                .unwrap_or(health_defaults.active_checks),
            check_interval: c.duration(
                "health.check_interval",
                raw.health.check_interval.as_ref(),
                health_defaults.check_interval,
            ),
            check_timeout: c.duration(
                "health.check_timeout",
                raw.health.check_timeout.as_ref(),
                health_defaults.check_timeout,
            ),
            failure_threshold: c.count(
                "health.failure_threshold",
                raw.health.failure_threshold.as_ref(),
                1000,
                health_defaults.failure_threshold,
            ),
            cooldown: c.duration(
                "health.cooldown",
                raw.health.cooldown.as_ref(),
                health_defaults.cooldown,
            ),
        };
        let stale_after = c.duration(
            "routing.stale_after",
            raw.routing.stale_after.as_ref(),
            Duration::from_secs(3),
        );
        let exclude_thermal = match &raw.routing.exclude_thermal {
            None => vec![ThermalState::Critical],
            Some(list) => {
                let mut states = Vec::new();
                for name in list.get_ref() {
                    match ThermalState::from_display_name(name) {
                        Some(s) => states.push(s),
                        None => c.error(list.span(), format!("routing.exclude_thermal: {name:?} is not one of Normal, Fair, Serious, Critical, Unknown")),
                    }
                }
                states
            }
        };

        let max_clock_skew = c.duration(
            "telemetry.max_clock_skew",
            raw.telemetry.max_clock_skew.as_ref(),
            Duration::from_secs(30),
        );
        let max_watts = match &raw.telemetry.max_watts {
            Some(w) if !(w.get_ref().is_finite() && *w.get_ref() > 0.0) => {
                c.error(w.span(), "telemetry.max_watts must be a positive number");
                DEFAULT_MAX_WATTS
            }
            Some(w) => *w.get_ref(),
            None => DEFAULT_MAX_WATTS,
        };

        let max_body_bytes = match &raw.api.max_body_bytes {
            Some(m) if !(1..=1 << 32).contains(m.get_ref()) => {
                c.error(
                    m.span(),
                    format!(
                        "api.max_body_bytes {} must be between 1 and 4294967296",
                        m.get_ref()
                    ),
                );
                DEFAULT_MAX_BODY_BYTES
            }
            Some(m) => usize::try_from(*m.get_ref()).unwrap_or(DEFAULT_MAX_BODY_BYTES),
            None => DEFAULT_MAX_BODY_BYTES,
        };

        let mut nodes = Vec::new();
        let mut ids = HashSet::new();
        let mut tokens = HashSet::new();
        for spanned in &raw.nodes {
            let n = spanned.get_ref();
            let id = n.id.get_ref().trim().to_owned();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-:".contains(ch))
            {
                c.error(
                    n.id.span(),
                    format!(
                        "nodes.id {:?}: use letters, digits, '.', '_', '-', ':' only",
                        n.id.get_ref()
                    ),
                );
            } else if !ids.insert(id.clone()) {
                c.error(n.id.span(), format!("nodes.id {id:?} appears twice"));
            }
            let url = n.url.get_ref().trim_end_matches('/').to_owned();
            if let Err(why) = check_node_url(&url) {
                c.error(
                    n.url.span(),
                    format!("node {id:?}: url {:?} {why}", n.url.get_ref()),
                );
            }
            let token = n.token.get_ref().clone();
            if token.is_empty()
                || token
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                c.error(
                    n.token.span(),
                    format!("node {id:?}: token must be non-empty, without spaces"),
                );
            } else if !tokens.insert(token.clone()) {
                // A token shared by two nodes could not say which node a stream speaks for.
                c.error(
                    n.token.span(),
                    format!("node {id:?}: token is also another node's; each node needs its own"),
                );
            }
            let pue = match &n.pue {
                Some(p) if !(p.get_ref().is_finite() && (1.0..=10.0).contains(p.get_ref())) => {
                    c.error(
                        p.span(),
                        format!(
                            "node {id:?}: pue {} must be between 1.0 and 10.0",
                            p.get_ref()
                        ),
                    );
                    1.0
                }
                Some(p) => *p.get_ref(),
                None => 1.0,
            };
            let max_concurrency = match &n.max_concurrency {
                Some(m) if !(1..=100_000).contains(m.get_ref()) => {
                    c.error(
                        m.span(),
                        format!(
                            "node {id:?}: max_concurrency {} must be between 1 and 100000",
                            m.get_ref()
                        ),
                    );
                    1
                }
                Some(m) => u32::try_from(*m.get_ref()).unwrap_or(1),
                None => DEFAULT_MAX_CONCURRENCY,
            };
            nodes.push(NodeConfig {
                id,
                url,
                token,
                pue,
                max_concurrency,
            });
        }
        if nodes.is_empty() {
            c.errors.push(ConfigError {
                line: None,
                message: "no [[nodes]]: the proxy needs at least one node to route to".into(),
            });
        }

        if !c.errors.is_empty() {
            c.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            listen,
            routing: RoutingConfig {
                policy,
                model_policy,
                stale_after,
                exclude_thermal,
                exploration_share,
                hysteresis,
                slo_ttft,
                queue_timeout,
                queue_limit,
            },
            telemetry: TelemetryConfig {
                max_clock_skew,
                max_watts,
            },
            api: ApiConfig { max_body_bytes },
            health,
            nodes,
        })
    }

    /// Reads and validates a file; an unreadable file is one error without a line.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        let mut config = Config::parse(&text)?;
        // Relative key and certificate paths are read from the config file's directory.
        if let (Some(tls), Some(dir)) = (config.listen.telemetry_tls.as_mut(), path.parent()) {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        Ok(config)
    }
}

pub const DEFAULT_MAX_WATTS: f64 = 20_000.0;
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;
/// Bodies with images run to many MiB; 64 MiB fits them with room.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

fn check_node_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must start with http:// (TLS to nodes is not supported yet)")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host");
    }
    if !authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err("needs an explicit port, e.g. http://10.0.0.7:11434");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[listen]
api = "127.0.0.1:11434"
telemetry = "127.0.0.1:50051"
admin = "127.0.0.1:9090"

[routing]
policy = "top"
stale_after = "3s"
exclude_thermal = ["Critical"]

[[nodes]]
id = "m2-studio"
url = "http://127.0.0.1:11435"
token = "change-me"
pue = 1.0
max_concurrency = 4
"#;

    #[test]
    fn contract_example_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.routing.stale_after, Duration::from_secs(3));
        assert_eq!(c.routing.exclude_thermal, vec![ThermalState::Critical]);
        assert_eq!(c.nodes[0].id, "m2-studio");
        assert_eq!(c.nodes[0].max_concurrency, 4);
        assert_eq!(c.telemetry.max_clock_skew, Duration::from_secs(30));
    }

    #[test]
    fn each_error_names_its_line() {
        let bad = GOOD
            .replace("policy = \"top\"", "policy = \"fastest\"")
            .replace("stale_after = \"3s\"", "stale_after = \"soon\"")
            .replace("pue = 1.0", "pue = 0.5");
        let errs = Config::parse(&bad).unwrap_err().0;
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(8), Some(9), Some(16)], "{errs:?}");
        assert!(errs[0].message.contains("fastest"));
    }

    #[test]
    fn worker_threads_default_to_the_cpus_and_must_be_positive() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.listen.threads, default_threads());
        let one = GOOD.replace(
            "admin = \"127.0.0.1:9090\"",
            "admin = \"127.0.0.1:9090\"\nthreads = 1",
        );
        assert_eq!(Config::parse(&one).unwrap().listen.threads, 1);
        let zero = GOOD.replace(
            "admin = \"127.0.0.1:9090\"",
            "admin = \"127.0.0.1:9090\"\nthreads = 0",
        );
        let errs = Config::parse(&zero).unwrap_err().0;
        assert_eq!(errs[0].line, Some(6), "{errs:?}");
        assert!(errs[0].message.contains("listen.threads 0"), "{errs:?}");
    }

    #[test]
    fn duplicate_ids_and_tokens_are_refused() {
        let twice = format!(
            "{GOOD}\n[[nodes]]\nid = \"m2-studio\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"change-me\"\n"
        );
        let errs = Config::parse(&twice).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.line.is_some()));
    }

    #[test]
    fn syntax_and_unknown_keys_name_a_line() {
        let errs = Config::parse("[listen]\napi = \n").unwrap_err().0;
        assert_eq!(errs[0].line, Some(2), "{errs:?}");
        let typo = GOOD.replace("stale_after", "stale_afterr");
        let errs = Config::parse(&typo).unwrap_err().0;
        assert_eq!(errs[0].line, Some(9), "{errs:?}");
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        for (name, text) in [
            (
                "proxy.example.toml",
                include_str!("../../config/proxy.example.toml"),
            ),
            (
                "demo-proxy.toml",
                include_str!("../../config/demo-proxy.toml"),
            ),
        ] {
            if let Err(e) = Config::parse(text) {
                panic!("config/{name}:\n{e}");
            }
        }
    }

    #[test]
    fn node_url_needs_scheme_and_port() {
        assert!(check_node_url("http://10.0.0.1:11434").is_ok());
        assert!(check_node_url("10.0.0.1:11434").is_err());
        assert!(check_node_url("http://10.0.0.1").is_err());
        assert!(check_node_url("http://").is_err());
    }
}
