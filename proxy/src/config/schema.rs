//! The config file as TOML spells it: every key optional where a default exists, each value
//! kept with its span so validation (`validate`) can name the line of a bad one. Nothing here
//! checks meaning.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Spanned<RawListen>,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    pub keys: Vec<Spanned<RawKey>>,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub models: RawModels,
    #[serde(default)]
    pub cluster: RawCluster,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub replica_id: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawModels {
    /// `"all"` or a number of nodes.
    pub pull_to: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub log: Option<Spanned<String>>,
}

/// A duration as written ("500ms", "3s", "2m"), parsed by `humantime-serde`. A value it cannot
/// parse is kept as text instead of failing the whole file, so that validation reports it with
/// its line beside every other error in the file.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Parsed(#[serde(with = "humantime_serde")] Duration),
    Unparsed(String),
}

pub type RawDuration = Option<Spanned<DurationValue>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub api: Spanned<String>,
    pub telemetry: Spanned<String>,
    pub admin: Spanned<String>,
    pub threads: Option<Spanned<i64>>,
    pub telemetry_tls_cert: Option<Spanned<String>>,
    pub telemetry_tls_key: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub policy: Option<Spanned<String>>,
    pub model_policy: Option<BTreeMap<String, Spanned<String>>>,
    pub stale_after: RawDuration,
    pub exclude_thermal: Option<Spanned<Vec<String>>>,
    pub exploration_share: Option<Spanned<f64>>,
    pub hysteresis: Option<Spanned<f64>>,
    pub slo_ttft: RawDuration,
    pub queue_timeout: RawDuration,
    pub queue_limit: Option<Spanned<i64>>,
    pub score: Option<Spanned<String>>,
    pub power_basis: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub active_checks: Option<bool>,
    pub check_interval: RawDuration,
    pub check_timeout: RawDuration,
    pub failure_threshold: Option<Spanned<i64>>,
    pub cooldown: RawDuration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub max_clock_skew: RawDuration,
    pub max_watts: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub history_step: RawDuration,
    pub history_window: RawDuration,
    pub token: Option<Spanned<String>>,
    pub token_sha256: Option<Spanned<String>>,
    pub protect_reads: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Spanned<String>,
    pub key: Option<Spanned<String>>,
    pub key_sha256: Option<Spanned<String>>,
    pub models: Option<Spanned<Vec<String>>>,
    pub requests_per_minute: Option<Spanned<i64>>,
    pub tokens_per_minute: Option<Spanned<i64>>,
    pub energy_wh_per_day: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: Spanned<String>,
    pub url: Spanned<String>,
    pub token: Spanned<String>,
    pub pue: Option<Spanned<f64>>,
    pub max_concurrency: Option<Spanned<i64>>,
    pub price_per_kwh: Option<Spanned<f64>>,
    pub carbon_g_per_kwh: Option<Spanned<f64>>,
}
