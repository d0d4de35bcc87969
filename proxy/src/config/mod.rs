//! The proxy's TOML configuration (docs/contract.md, Config): the validated [`Config`] the
//! proxy runs on; the file's schema as TOML spells it (`schema`); validation whose every error
//! names its line (`validate`), so `check-config` and a refused reload point at what to fix;
//! and every default in one place (`defaults`).

pub mod defaults;
mod schema;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wes_proto::ThermalState;

use crate::access::SecretDigest;
use crate::policy::PolicyName;

/// A validated configuration. Only [`Config::parse`] makes one, so holding one means every
/// check below passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: ListenConfig,
    pub routing: RoutingConfig,
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub health: HealthConfig,
    pub admin: AdminConfig,
    pub nodes: Vec<NodeConfig>,
    /// Client API keys; none leaves the API open, as Ollama's is.
    pub keys: Vec<Arc<KeyConfig>>,
    pub usage: UsageConfig,
    pub models: ModelsConfig,
    pub cluster: ClusterConfig,
}

/// Running as one of several replicas (`[cluster]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterConfig {
    /// This replica's name to the reporters; `None`: the host name and a random suffix.
    /// Read at start only.
    pub replica_id: Option<String>,
}

/// Fleet model management's settings (`[models]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelsConfig {
    /// Where a pull goes when the call does not name nodes.
    pub pull_to: PullTo,
}

/// Where a pull goes without `X-WES-Nodes` (`[models] pull_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullTo {
    /// Every healthy node (`"all"`).
    #[default]
    All,
    /// The N healthy nodes it fits best: most free model memory first, then the best ranked.
    Best(u32),
}

/// The energy ledger's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageConfig {
    /// The append-only JSON-lines log the ledger is kept in and rebuilt from at start; `None`:
    /// the ledger lives in memory only and a restart loses it.
    pub log: Option<std::path::PathBuf>,
}

/// One `[[keys]]` table: who a client is, what it may use, how much.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    /// What logs, metrics and `/usage` call the key; the key itself is never shown.
    pub id: Arc<str>,
    pub digest: SecretDigest,
    /// The models the key may use; `None` for every model.
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
}

impl KeyConfig {
    /// Whether the key may use `model` (`llama3.2` and `llama3.2:latest` are one model).
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|models| {
            models
                .iter()
                .any(|m| crate::fleet::model_name::same(m, model))
        })
    }
}

/// A key's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u32>,
    /// Output tokens.
    pub tokens_per_minute: Option<u64>,
    /// Measured energy (gross, × PUE) of the key's requests.
    pub energy_wh_per_day: Option<f64>,
}

/// The admin listener's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Each node's history (`GET /ranking/history`, the leaderboard's sparklines) holds one
    /// point per step...
    pub history_step: Duration,
    /// ...over this window.
    pub history_window: Duration,
    /// The admin token's digest: POST calls here and the API's management calls need it, and
    /// so does `GET /usage`. `None` only with the admin listener on a loopback address.
    pub token: Option<SecretDigest>,
    /// Every admin GET but `/healthz` needs the token too.
    pub protect_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            history_step: defaults::HISTORY_STEP,
            history_window: defaults::HISTORY_WINDOW,
            token: None,
            protect_reads: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Larger request bodies are refused with 413 before any node sees them.
    pub max_body_bytes: usize,
    /// A request line and headers larger than this are refused with 431.
    pub max_header_bytes: usize,
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
    pub policy: PolicyName,
    /// Per-model policy overrides: model name → policy.
    pub model_policy: BTreeMap<String, PolicyName>,
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
    /// What a candidate is scored on: its WES with this request added, or the tokens per watt
    /// this request adds (docs/design.md, Load).
    pub score: LoadScore,
    /// Whether the watts a score divides by include the node's idle power.
    pub power_basis: PowerBasis,
}

/// `routing.score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadScore {
    /// `T(n+1) / (P(n+1) × PUE × penalty)`: the node's penalized WES with this request added.
    Average,
    /// `(T(n+1) − T(n)) / ((P(n+1) − P(n)) × PUE × penalty)`: what this request adds.
    Marginal,
}

impl LoadScore {
    pub const ALL: [(&'static str, LoadScore); 2] = [
        ("average", LoadScore::Average),
        ("marginal", LoadScore::Marginal),
    ];
}

/// `routing.power_basis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerBasis {
    /// The node's whole draw: the seed's definition.
    Gross,
    /// The draw above the node's idle power.
    Net,
}

impl PowerBasis {
    pub const ALL: [(&'static str, PowerBasis); 2] =
        [("gross", PowerBasis::Gross), ("net", PowerBasis::Net)];
}

impl RoutingConfig {
    /// The policy for `model`: its override, else the default.
    pub fn policy_for(&self, model: &str) -> PolicyName {
        if self.model_policy.is_empty() {
            return self.policy;
        }
        crate::fleet::model_name::find(model, |name| self.model_policy.get(name).copied())
            .unwrap_or(self.policy)
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            policy: defaults::POLICY,
            model_policy: BTreeMap::new(),
            stale_after: defaults::STALE_AFTER,
            exclude_thermal: defaults::EXCLUDE_THERMAL.to_vec(),
            exploration_share: defaults::EXPLORATION_SHARE,
            hysteresis: defaults::HYSTERESIS,
            slo_ttft: defaults::SLO_TTFT,
            queue_timeout: defaults::QUEUE_TIMEOUT,
            queue_limit: defaults::QUEUE_LIMIT,
            score: defaults::LOAD_SCORE,
            power_basis: defaults::POWER_BASIS,
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
    /// Relayed requests that failed in a row (the node's failures, `relay::blame`) that open
    /// its circuit; a failed active check keeps the node out on its own, without counting here.
    pub failure_threshold: u32,
    /// How long an open circuit keeps traffic away before one trial request.
    pub cooldown: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            active_checks: defaults::ACTIVE_CHECKS,
            check_interval: defaults::CHECK_INTERVAL,
            check_timeout: defaults::CHECK_TIMEOUT,
            failure_threshold: defaults::FAILURE_THRESHOLD,
            cooldown: defaults::COOLDOWN,
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
    /// What a kWh costs at the node's site, in the operator's currency: `/usage` adds `cost`.
    pub price_per_kwh: Option<f64>,
    /// Grams of CO2 per kWh at the node's site: `/usage` adds `carbon_g`.
    pub carbon_g_per_kwh: Option<f64>,
}

#[cfg(test)]
impl NodeConfig {
    /// A node at an address nothing listens on, token `t-ID`, PUE 1, four slots.
    pub fn for_test(id: &str) -> Self {
        NodeConfig {
            id: id.into(),
            url: "http://127.0.0.1:1".into(),
            token: format!("t-{id}"),
            pue: 1.0,
            max_concurrency: 4,
            price_per_kwh: None,
            carbon_g_per_kwh: None,
        }
    }
}

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

impl Config {
    /// Parses and validates a whole file. Either every check passes or nothing is returned, so a
    /// reload can never apply half a file.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: schema::RawConfig = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                line: e.span().map(|s| validate::line_of(text, s.start)),
                message: e.message().trim().to_owned(),
            }])
        })?;
        validate::validate(raw, text)
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
        // Relative key, certificate and log paths are the config file's directory's.
        if let (Some(tls), Some(dir)) = (config.listen.telemetry_tls.as_mut(), path.parent()) {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        if let (Some(log), Some(dir)) = (config.usage.log.as_mut(), path.parent()) {
            *log = dir.join(&*log);
        }
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::defaults::threads as default_threads;
    use super::validate::check_node_url;
    use super::*;

    #[test]
    fn a_model_policy_applies_to_both_spellings_of_its_name() {
        use crate::policy::PolicyName;
        let mut routing = RoutingConfig::default();
        let other = if routing.policy == PolicyName::RoundRobin {
            PolicyName::Top
        } else {
            PolicyName::RoundRobin
        };
        routing.model_policy.insert("llama3.2:latest".into(), other);
        assert_eq!(routing.policy_for("llama3.2"), other);
        assert_eq!(routing.policy_for("llama3.2:latest"), other);
        assert_eq!(routing.policy_for("llama3.2:3b"), routing.policy);
    }

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
    fn load_score_and_power_basis_default_and_name_their_choices() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.routing.score, LoadScore::Marginal);
        assert_eq!(c.routing.power_basis, PowerBasis::Gross);
        let set = GOOD.replace(
            "policy = \"top\"",
            "policy = \"top\"\nscore = \"average\"\npower_basis = \"net\"",
        );
        let c = Config::parse(&set).unwrap();
        assert_eq!(c.routing.score, LoadScore::Average);
        assert_eq!(c.routing.power_basis, PowerBasis::Net);
        let bad = GOOD.replace("policy = \"top\"", "policy = \"top\"\nscore = \"best\"");
        let errs = Config::parse(&bad).unwrap_err().0;
        assert_eq!(errs[0].line, Some(9), "{errs:?}");
        assert!(
            errs[0].message.contains("routing.score")
                && errs[0].message.contains("average, marginal"),
            "{errs:?}"
        );
    }

    #[test]
    fn keys_parse_as_digests_with_their_limits() {
        let text = format!(
            "{GOOD}\n[[keys]]\nid = \"team-a\"\nkey = \"sk-a\"\nmodels = [\"llama3.2:3b\"]\nrequests_per_minute = 600\ntokens_per_minute = 100000\nenergy_wh_per_day = 50\n\n[[keys]]\nid = \"team-b\"\nkey_sha256 = \"8879f6a4ae35c420a15d35fed3b8dd07577207803d404f6d4cc4fa829dafa910\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.keys.len(), 2);
        let a = &c.keys[0];
        assert_eq!(&*a.id, "team-a");
        assert!(a.digest.matches(&SecretDigest::of("sk-a")));
        assert_eq!(a.models.as_deref(), Some(&["llama3.2:3b".to_owned()][..]));
        assert_eq!(
            a.limits,
            KeyLimits {
                requests_per_minute: Some(600),
                tokens_per_minute: Some(100_000),
                energy_wh_per_day: Some(50.0),
            }
        );
        // team-b's digest is that of "sk-team-a".
        assert!(c.keys[1].digest.matches(&SecretDigest::of("sk-team-a")));
        assert_eq!(c.keys[1].limits, KeyLimits::default());
        // The secret itself is nowhere in what the config prints.
        assert!(!format!("{c:?}").contains("sk-a"));
    }

    #[test]
    fn bad_keys_name_their_lines() {
        for (table, says) in [
            ("id = \"a\"", "needs key"),
            ("id = \"a\"\nkey = \"x\"\nkey_sha256 = \"00\"", "both set"),
            ("id = \"a\"\nkey_sha256 = \"00\"", "64 hex digits"),
            ("id = \"a b\"\nkey = \"x\"", "letters, digits"),
            (
                "id = \"a\"\nkey = \"x\"\nrequests_per_minute = 0",
                "between 1",
            ),
            (
                "id = \"a\"\nkey = \"x\"\nenergy_wh_per_day = -1",
                "positive",
            ),
            ("id = \"a\"\nkey = \"x\"\nmodels = []", "models is empty"),
        ] {
            let text = format!("{GOOD}\n[[keys]]\n{table}\n");
            let errs = Config::parse(&text).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{table}: {errs:?}");
            assert!(
                errs[0].line.is_some_and(|l| l > 18) && errs[0].message.contains(says),
                "{table}: {errs:?}"
            );
        }
        let twice = format!(
            "{GOOD}\n[[keys]]\nid = \"a\"\nkey = \"x\"\n[[keys]]\nid = \"a\"\nkey = \"y\"\n[[keys]]\nid = \"b\"\nkey = \"x\"\n"
        );
        let errs = Config::parse(&twice).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("appears twice"), "{errs:?}");
        assert!(errs[1].message.contains("same key"), "{errs:?}");
    }

    #[test]
    fn pull_to_is_all_or_a_number_of_nodes() {
        assert_eq!(Config::parse(GOOD).unwrap().models.pull_to, PullTo::All);
        let two = format!("{GOOD}\n[models]\npull_to = 2\n");
        assert_eq!(Config::parse(&two).unwrap().models.pull_to, PullTo::Best(2));
        let all = format!("{GOOD}\n[models]\npull_to = \"all\"\n");
        assert_eq!(Config::parse(&all).unwrap().models.pull_to, PullTo::All);
        for bad in ["0", "\"some\"", "1.5"] {
            let text = format!("{GOOD}\n[models]\npull_to = {bad}\n");
            let errs = Config::parse(&text).unwrap_err().0;
            assert!(errs[0].message.starts_with("models.pull_to"), "{errs:?}");
            assert!(errs[0].line.is_some(), "{errs:?}");
        }
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        let open = GOOD.replace("admin = \"127.0.0.1:9090\"", "admin = \"0.0.0.0:9090\"");
        let errs = Config::parse(&open).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, Some(5));
        assert!(errs[0].message.contains("admin.token"), "{errs:?}");
        let guarded = format!("{open}\n[admin]\ntoken = \"adm-1\"\nprotect_reads = true\n");
        let c = Config::parse(&guarded).unwrap();
        assert!(
            c.admin
                .token
                .as_ref()
                .is_some_and(|t| t.matches(&SecretDigest::of("adm-1")))
        );
        assert!(c.admin.protect_reads);
        let both = format!(
            "{GOOD}\n[admin]\ntoken = \"a\"\ntoken_sha256 = \"{}\"\n",
            "0".repeat(64)
        );
        let errs = Config::parse(&both).unwrap_err().0;
        assert!(errs[0].message.contains("both set"), "{errs:?}");
    }

    #[test]
    fn history_step_and_window_default_and_are_bounded() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.admin.history_window, Duration::from_secs(900));
        let set = format!("{GOOD}\n[admin]\nhistory_step = \"1s\"\nhistory_window = \"1h\"\n");
        let c = Config::parse(&set).unwrap();
        assert_eq!(c.admin.history_step, Duration::from_secs(1));
        assert_eq!(c.admin.history_window, Duration::from_secs(3600));
        for (bad, says) in [
            ("history_step = \"10ms\"", "from 100ms"),
            ("history_step = \"20m\"", "from 100ms"),
            (
                "history_step = \"100ms\"\nhistory_window = \"1h\"",
                "more than 10000 points",
            ),
        ] {
            let text = format!("{GOOD}\n[admin]\n{bad}\n");
            let errs = Config::parse(&text).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].line.is_some() && errs[0].message.contains(says),
                "{errs:?}"
            );
        }
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
                include_str!("../../../config/proxy.example.toml"),
            ),
            (
                "demo-proxy.toml",
                include_str!("../../../config/demo-proxy.toml"),
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
