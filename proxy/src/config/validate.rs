//! From the TOML schema (`schema`) to a [`Config`]: every check of meaning, each error with its
//! line, all errors of a file collected in one pass so `check-config` and a refused reload list
//! everything to fix at once.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use wes_proto::ThermalState;

use super::schema::{DurationValue, RawConfig};
use super::{
    AdminConfig, ApiConfig, ClusterConfig, Config, ConfigError, ConfigErrors, HealthConfig,
    KeyConfig, KeyLimits, ListenConfig, LoadScore, ModelsConfig, NodeConfig, PowerBasis, PullTo,
    RoutingConfig, TelemetryConfig, TlsFiles, UsageConfig, defaults,
};
use crate::access::SecretDigest;
use crate::policy::PolicyName;

/// Collects errors against the file text, turning byte spans into line numbers.
pub struct Validator<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

/// 1-based line of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = Some(line_of(self.text, span.start));
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
        value: Option<&Spanned<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match value.get_ref() {
            DurationValue::Parsed(d) if !d.is_zero() => *d,
            DurationValue::Parsed(_) => {
                self.error(value.span(), format!("{field} must be more than zero"));
                default
            }
            DurationValue::Unparsed(text) => {
                // humantime-serde refused it; humantime says why.
                let why = humantime::parse_duration(text)
                    .err()
                    .map_or_else(String::new, |e| format!(" ({e})"));
                self.error(
                    value.span(),
                    format!(
                        "{field}: {text:?} is not a duration like \"500ms\", \"3s\", \"2m\"{why}"
                    ),
                );
                default
            }
        }
    }

    fn policy(&mut self, field: &str, value: &Spanned<String>) -> PolicyName {
        if let Some(p) = PolicyName::parse(value.get_ref()) {
            return p;
        }
        let known: Vec<&str> = PolicyName::ALL.iter().map(|p| p.as_str()).collect();
        self.error(
            value.span(),
            format!(
                "{field}: unknown policy {:?}; known: {}",
                value.get_ref(),
                known.join(", ")
            ),
        );
        defaults::POLICY
    }

    /// One of `known`'s names.
    fn choice<T: Copy>(
        &mut self,
        field: &str,
        value: Option<&Spanned<String>>,
        known: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some((_, v)) = known.iter().find(|(name, _)| name == value.get_ref()) {
            return *v;
        }
        let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
        self.error(
            value.span(),
            format!(
                "{field}: unknown value {:?}; known: {}",
                value.get_ref(),
                names.join(", ")
            ),
        );
        default
    }

    /// A secret written as itself or as its SHA-256 (never both); `None` when neither is set
    /// or the one set is unusable.
    fn secret(
        &mut self,
        (plain_field, plain): (&str, Option<&Spanned<String>>),
        (digest_field, digest): (&str, Option<&Spanned<String>>),
    ) -> Option<SecretDigest> {
        match (plain, digest) {
            (None, None) => None,
            (Some(_), Some(d)) => {
                self.error(
                    d.span(),
                    format!("{plain_field} and {digest_field} both set: keep one"),
                );
                None
            }
            (Some(p), None) => {
                let text = p.get_ref();
                if text.is_empty() || text.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    self.error(
                        p.span(),
                        format!("{plain_field} must be non-empty, without spaces"),
                    );
                    return None;
                }
                Some(SecretDigest::of(text))
            }
            (None, Some(d)) => {
                let parsed = SecretDigest::from_hex(d.get_ref());
                if parsed.is_none() {
                    self.error(
                        d.span(),
                        format!(
                            "{digest_field} must be 64 hex digits (what `printf %s SECRET | sha256sum` prints)"
                        ),
                    );
                }
                parsed
            }
        }
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

    /// A whole number from 1 to `max`, as the type the config holds it in.
    fn count<T: TryFrom<i64>>(
        &mut self,
        field: &str,
        value: Option<&Spanned<i64>>,
        max: i64,
        default: T,
    ) -> T {
        match value {
            Some(v) if !(1..=max).contains(v.get_ref()) => {
                self.error(
                    v.span(),
                    format!("{field} {} must be between 1 and {max}", v.get_ref()),
                );
                default
            }
            Some(v) => T::try_from(*v.get_ref()).unwrap_or(default),
            None => default,
        }
    }
}

/// Checks a parsed file whole: a `Config` only when every check passed.
pub fn validate(raw: RawConfig, text: &str) -> Result<Config, ConfigErrors> {
    let mut c = Validator {
        text,
        errors: Vec::new(),
    };
    let listen = listen(&mut c, &raw);
    let routing = routing(&mut c, &raw);
    let health = health(&mut c, &raw);
    let telemetry = TelemetryConfig {
        max_clock_skew: c.duration(
            "telemetry.max_clock_skew",
            raw.telemetry.max_clock_skew.as_ref(),
            defaults::MAX_CLOCK_SKEW,
        ),
        max_watts: match &raw.telemetry.max_watts {
            Some(w) if !(w.get_ref().is_finite() && *w.get_ref() > 0.0) => {
                c.error(w.span(), "telemetry.max_watts must be a positive number");
                defaults::MAX_WATTS
            }
            Some(w) => *w.get_ref(),
            None => defaults::MAX_WATTS,
        },
    };
    let api = ApiConfig {
        max_body_bytes: c.count(
            "api.max_body_bytes",
            raw.api.max_body_bytes.as_ref(),
            1 << 32,
            defaults::MAX_BODY_BYTES,
        ),
        max_header_bytes: c.count(
            "api.max_header_bytes",
            raw.api.max_header_bytes.as_ref(),
            1 << 20,
            defaults::MAX_HEADER_BYTES,
        ),
    };
    let admin = admin(&mut c, &raw);
    if admin.token.is_none() && !listen.admin.ip().is_loopback() {
        // Anyone who reaches it could drain every node or reload the config.
        let listen_raw = raw.listen.get_ref();
        c.error(
            listen_raw.admin.span(),
            format!(
                "listen.admin {} is reachable from other machines and [admin] has no token: set admin.token (or admin.token_sha256), or bind the admin listener to 127.0.0.1",
                listen.admin
            ),
        );
    }
    let nodes = nodes(&mut c, &raw);
    let keys = keys(&mut c, &raw);
    let usage = UsageConfig {
        log: raw.usage.log.as_ref().and_then(|l| {
            if l.get_ref().trim().is_empty() {
                c.error(l.span(), "usage.log must be a file path");
                None
            } else {
                Some(l.get_ref().into())
            }
        }),
    };
    let models = ModelsConfig {
        pull_to: match &raw.models.pull_to {
            None => PullTo::All,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "all" => PullTo::All,
                toml::Value::Integer(n) if (1..=10_000).contains(n) => PullTo::Best(*n as u32),
                other => {
                    c.error(
                        v.span(),
                        format!("models.pull_to {other} must be \"all\" or a number of nodes from 1 to 10000"),
                    );
                    PullTo::All
                }
            },
        },
    };
    let cluster = ClusterConfig {
        replica_id: raw.cluster.replica_id.as_ref().and_then(|id| {
            let text = id.get_ref();
            if text.is_empty() || text.len() > 256 || text.chars().any(char::is_whitespace) {
                c.error(
                    id.span(),
                    "cluster.replica_id must be 1 to 256 characters without whitespace",
                );
                None
            } else {
                Some(text.clone())
            }
        }),
    };
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        listen,
        routing,
        telemetry,
        api,
        health,
        admin,
        nodes,
        keys,
        usage,
        models,
        cluster,
    })
}

/// Points per node the history may hold: 10,000 nodes' worth stays within a few hundred MB.
const MAX_HISTORY_POINTS: u128 = 10_000;

fn admin(c: &mut Validator<'_>, raw: &RawConfig) -> AdminConfig {
    let a = &raw.admin;
    let step = c.duration(
        "admin.history_step",
        a.history_step.as_ref(),
        defaults::HISTORY_STEP,
    );
    let window = c.duration(
        "admin.history_window",
        a.history_window.as_ref(),
        defaults::HISTORY_WINDOW,
    );
    let span = a
        .history_window
        .as_ref()
        .or(a.history_step.as_ref())
        .map(Spanned::span);
    if let Some(span) = span {
        if step < Duration::from_millis(100) || step > window {
            c.error(
                span,
                format!(
                    "admin.history_step {} must be from 100ms to admin.history_window ({})",
                    humantime::format_duration(step),
                    humantime::format_duration(window)
                ),
            );
        } else if window.as_millis() / step.as_millis() > MAX_HISTORY_POINTS {
            c.error(
                span,
                format!(
                    "admin.history_window {} over admin.history_step {} makes more than {MAX_HISTORY_POINTS} points per node",
                    humantime::format_duration(window),
                    humantime::format_duration(step)
                ),
            );
        }
    }
    let token = c.secret(
        ("admin.token", a.token.as_ref()),
        ("admin.token_sha256", a.token_sha256.as_ref()),
    );
    AdminConfig {
        history_step: step,
        history_window: window,
        token,
        protect_reads: a.protect_reads.unwrap_or(false),
    }
}

fn keys(c: &mut Validator<'_>, raw: &RawConfig) -> Vec<Arc<KeyConfig>> {
    let mut keys: Vec<Arc<KeyConfig>> = Vec::new();
    for spanned in &raw.keys {
        let k = spanned.get_ref();
        let id = k.id.get_ref().trim().to_owned();
        if !is_identifier(&id) {
            c.error(
                k.id.span(),
                format!(
                    "keys.id {:?}: use letters, digits, '.', '_', '-', ':' only",
                    k.id.get_ref()
                ),
            );
        } else if keys.iter().any(|other| *other.id == *id) {
            c.error(k.id.span(), format!("keys.id {id:?} appears twice"));
        }
        let field = |name: &str| format!("key {id:?}: {name}");
        let Some(digest) = c.secret(
            (&field("key"), k.key.as_ref()),
            (&field("key_sha256"), k.key_sha256.as_ref()),
        ) else {
            if k.key.is_none() && k.key_sha256.is_none() {
                c.error(
                    spanned.span(),
                    format!("key {id:?}: needs key = \"...\" or key_sha256 = \"<hex>\""),
                );
            }
            continue;
        };
        if keys.iter().any(|other| other.digest == digest) {
            // One secret for two ids could not say which one calls.
            c.error(
                spanned.span(),
                format!("key {id:?}: the same key as another [[keys]] entry; each needs its own"),
            );
        }
        let models = match &k.models {
            Some(list) if list.get_ref().is_empty() => {
                c.error(
                    list.span(),
                    format!("key {id:?}: models is empty; leave it out to allow every model"),
                );
                None
            }
            Some(list) => Some(list.get_ref().clone()),
            None => None,
        };
        let limits = KeyLimits {
            requests_per_minute: k
                .requests_per_minute
                .as_ref()
                .map(|v| c.count(&field("requests_per_minute"), Some(v), 10_000_000, 1)),
            tokens_per_minute: k
                .tokens_per_minute
                .as_ref()
                .map(|v| c.count(&field("tokens_per_minute"), Some(v), 1_000_000_000_000, 1)),
            energy_wh_per_day: match &k.energy_wh_per_day {
                Some(w) if !(w.get_ref().is_finite() && *w.get_ref() > 0.0) => {
                    c.error(
                        w.span(),
                        format!(
                            "key {id:?}: energy_wh_per_day {} must be a positive number",
                            w.get_ref()
                        ),
                    );
                    None
                }
                Some(w) => Some(*w.get_ref()),
                None => None,
            },
        };
        keys.push(Arc::new(KeyConfig {
            id: id.into(),
            digest,
            models,
            limits,
        }));
    }
    keys
}

/// Node and key ids: what logs, metrics and URLs carry without quoting.
fn is_identifier(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-:".contains(ch))
}

fn listen(c: &mut Validator<'_>, raw: &RawConfig) -> ListenConfig {
    let listen_raw = raw.listen.get_ref();
    let listen = ListenConfig {
        api: c.addr("api", &listen_raw.api),
        telemetry: c.addr("telemetry", &listen_raw.telemetry),
        admin: c.addr("admin", &listen_raw.admin),
        threads: c.count(
            "listen.threads",
            listen_raw.threads.as_ref(),
            1024,
            defaults::threads(),
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
    listen
}

fn routing(c: &mut Validator<'_>, raw: &RawConfig) -> RoutingConfig {
    let r = &raw.routing;
    let policy = match &r.policy {
        Some(p) => c.policy("routing.policy", p),
        None => defaults::POLICY,
    };
    let mut model_policy = BTreeMap::new();
    for (model, p) in r.model_policy.iter().flatten() {
        let name = c.policy(&format!("routing.model_policy.{model:?}"), p);
        model_policy.insert(model.clone(), name);
    }
    let exploration_share = c.fraction(
        "routing.exploration_share",
        r.exploration_share.as_ref(),
        0.5,
        defaults::EXPLORATION_SHARE,
    );
    let hysteresis = c.fraction(
        "routing.hysteresis",
        r.hysteresis.as_ref(),
        1.0,
        defaults::HYSTERESIS,
    );
    let slo_ttft = c.duration("routing.slo_ttft", r.slo_ttft.as_ref(), defaults::SLO_TTFT);
    let queue_timeout = c.duration(
        "routing.queue_timeout",
        r.queue_timeout.as_ref(),
        defaults::QUEUE_TIMEOUT,
    );
    let queue_limit = c.count(
        "routing.queue_limit",
        r.queue_limit.as_ref(),
        1_000_000,
        defaults::QUEUE_LIMIT,
    );
    let stale_after = c.duration(
        "routing.stale_after",
        r.stale_after.as_ref(),
        defaults::STALE_AFTER,
    );
    let exclude_thermal = match &r.exclude_thermal {
        None => defaults::EXCLUDE_THERMAL.to_vec(),
        Some(list) => {
            let mut states = Vec::new();
            for name in list.get_ref() {
                match ThermalState::from_display_name(name) {
                    Some(s) => states.push(s),
                    None => c.error(
                        list.span(),
                        format!(
                            "routing.exclude_thermal: {name:?} is not one of Normal, Fair, Serious, Critical, Unknown"
                        ),
                    ),
                }
            }
            states
        }
    };
    let score = c.choice(
        "routing.score",
        r.score.as_ref(),
        &LoadScore::ALL,
        defaults::LOAD_SCORE,
    );
    let power_basis = c.choice(
        "routing.power_basis",
        r.power_basis.as_ref(),
        &PowerBasis::ALL,
        defaults::POWER_BASIS,
    );
    RoutingConfig {
        score,
        power_basis,
        policy,
        model_policy,
        stale_after,
        exclude_thermal,
        exploration_share,
        hysteresis,
        slo_ttft,
        queue_timeout,
        queue_limit,
    }
}

fn health(c: &mut Validator<'_>, raw: &RawConfig) -> HealthConfig {
    let h = &raw.health;
    HealthConfig {
        active_checks: h.active_checks.unwrap_or(defaults::ACTIVE_CHECKS),
        check_interval: c.duration(
            "health.check_interval",
            h.check_interval.as_ref(),
            defaults::CHECK_INTERVAL,
        ),
        check_timeout: c.duration(
            "health.check_timeout",
            h.check_timeout.as_ref(),
            defaults::CHECK_TIMEOUT,
        ),
        failure_threshold: c.count(
            "health.failure_threshold",
            h.failure_threshold.as_ref(),
            1000,
            defaults::FAILURE_THRESHOLD,
        ),
        cooldown: c.duration("health.cooldown", h.cooldown.as_ref(), defaults::COOLDOWN),
    }
}

fn nodes(c: &mut Validator<'_>, raw: &RawConfig) -> Vec<NodeConfig> {
    let mut nodes = Vec::new();
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for spanned in &raw.nodes {
        let n = spanned.get_ref();
        let id = n.id.get_ref().trim().to_owned();
        if !is_identifier(&id) {
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
                defaults::PUE
            }
            Some(p) => *p.get_ref(),
            None => defaults::PUE,
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
            None => defaults::MAX_CONCURRENCY,
        };
        let mut site_figure = |field: &str, value: &Option<Spanned<f64>>| match value {
            Some(v) if !(v.get_ref().is_finite() && *v.get_ref() >= 0.0) => {
                c.error(
                    v.span(),
                    format!("node {id:?}: {field} {} must be zero or more", v.get_ref()),
                );
                None
            }
            Some(v) => Some(*v.get_ref()),
            None => None,
        };
        let price_per_kwh = site_figure("price_per_kwh", &n.price_per_kwh);
        let carbon_g_per_kwh = site_figure("carbon_g_per_kwh", &n.carbon_g_per_kwh);
        nodes.push(NodeConfig {
            id,
            url,
            token,
            pue,
            max_concurrency,
            price_per_kwh,
            carbon_g_per_kwh,
        });
    }
    if nodes.is_empty() {
        c.errors.push(ConfigError {
            line: None,
            message: "no [[nodes]]: the proxy needs at least one node to route to".into(),
        });
    }
    nodes
}

pub fn check_node_url(url: &str) -> Result<(), &'static str> {
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
