//! Reporter settings: a TOML file, flags, or both (flags win), validated once at start.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::sensor::sim::SimParams;
use crate::sensor::thermal::ThermalThresholds;

/// Which sensor backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum SensorChoice {
    #[default]
    Auto,
    Nvml,
    Apple,
    Linux,
    Command,
    Sim,
}

/// The flags of docs/contract.md (Reporter CLI). Every one is optional here so that a config file can supply it.
#[derive(Debug, Clone, Default, Args)]
pub struct ReporterFlags {
    /// TOML file with the same settings; flags given on the command line override it.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// This node's id, as the proxy's `[[nodes]] id`.
    #[arg(long, global = true)]
    pub node_id: Option<String>,
    /// A proxy's telemetry URL, e.g. http://10.0.0.5:50051; repeat for one stream per proxy.
    #[arg(long = "proxy", global = true)]
    pub proxies: Vec<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for `https://` proxies;
    /// without it the system's trust store is used.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// The name an `https://` proxy's certificate must carry when it is not the URL's host, e.g.
    /// when reporters dial each replica's IP but replicas share one service name.
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
    /// Bearer token the proxy binds to this node id.
    #[arg(
        long,
        env = "WES_REPORTER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// This node's Ollama base URL.
    #[arg(long, global = true)]
    pub ollama: Option<String>,
    /// Time between samples, e.g. "1s", "500ms".
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    pub interval: Option<Duration>,
    /// Between samples, read the sensor this often and send a sample at once when the thermal
    /// state changed ("0s": only at the interval). Default 250ms; off for `--sensor command`.
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    pub thermal_check: Option<Duration>,
    #[arg(long, value_enum, global = true)]
    pub sensor: Option<SensorChoice>,
    /// For `--sensor command`: run with `sh -c` once per interval; prints one JSON object.
    #[arg(long, global = true)]
    pub sensor_command: Option<String>,
    /// Model for the optional decode-rate probe; no probe without it.
    #[arg(long, global = true)]
    pub probe_model: Option<String>,
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    pub probe_interval: Option<Duration>,
    /// After the single-stream probe, the same probe as this many streams at once, each
    /// count in turn (default 2,4,8): the node's throughput under load before traffic shows it.
    #[arg(long, value_delimiter = ',', global = true)]
    pub probe_streams: Option<Vec<u32>>,
    /// How often the engine's model list is read (default 5s); a proxy that changed it
    /// (a pull through it) asks for it at once.
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    pub models_interval: Option<Duration>,
    /// Root of the sysfs tree the `linux` sensor reads (tests point it at a fixture).
    #[arg(long, global = true)]
    pub sysfs_root: Option<PathBuf>,
    /// The memory models load into (the GPU's, or RAM for CPU inference), e.g. "24GiB": sent
    /// beside the loaded models so that the proxy sees when one more model evicts another.
    #[arg(long, global = true)]
    pub model_memory: Option<String>,
}

/// The file form. Unknown keys are an error so that a typo is not silently ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterFile {
    pub node_id: Option<String>,
    #[serde(default)]
    pub proxies: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub token: Option<String>,
    pub ollama: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub thermal_check: Option<Duration>,
    pub sensor: Option<SensorChoice>,
    pub sensor_command: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub sensor_command_timeout: Option<Duration>,
    pub probe_model: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub probe_interval: Option<Duration>,
    /// The probe runs only while utilization (when known) is below this share, in percent.
    pub probe_idle_below_pct: Option<f64>,
    /// Concurrent probes after the single one; `[]` runs none.
    pub probe_streams: Option<Vec<u32>>,
    #[serde(default, with = "humantime_serde::option")]
    pub models_interval: Option<Duration>,
    pub sysfs_root: Option<PathBuf>,
    pub model_memory: Option<String>,
    #[serde(default)]
    pub thermal: Option<ThermalThresholds>,
    #[serde(default)]
    pub sim: Option<SimParams>,
    /// Seed of the `sim` sensor's load pattern; defaults to a hash of the node id.
    pub sim_seed: Option<u64>,
}

/// Settings after merging the file and the flags, with defaults applied.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    pub node_id: String,
    pub proxies: Vec<String>,
    /// The PEM read from `ca_cert`, trusted for `https://` proxies instead of the system store.
    pub ca_pem: Option<Vec<u8>>,
    /// Checked against `https://` proxies' certificates instead of the URL's host.
    pub tls_server_name: Option<String>,
    pub token: String,
    pub ollama: Option<String>,
    pub interval: Duration,
    /// `None`: thermal changes wait for the next sample.
    pub thermal_check: Option<Duration>,
    pub sensor: SensorChoice,
    pub sensor_command: Option<String>,
    pub sensor_command_timeout: Duration,
    pub probe_model: Option<String>,
    pub probe_interval: Duration,
    pub probe_idle_below_pct: f64,
    /// Stream counts of the concurrent probes, each from 2 to 16.
    pub probe_streams: Vec<u32>,
    pub models_interval: Duration,
    pub sysfs_root: PathBuf,
    /// Bytes; `None`: unknown, and the proxy predicts no evictions.
    pub model_memory: Option<u64>,
    pub thermal: ThermalThresholds,
    pub sim: SimParams,
    pub sim_seed: u64,
}

impl ReporterConfig {
    /// Reads `flags.config` if given, merges the flags over it and checks the result.
    pub fn load(flags: ReporterFlags) -> anyhow::Result<Self> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                toml::from_str::<ReporterFile>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => ReporterFile::default(),
        };
        Self::merge(file, flags)
    }

    fn merge(file: ReporterFile, flags: ReporterFlags) -> anyhow::Result<Self> {
        let node_id = flags
            .node_id
            .or(file.node_id)
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("a node id is required (--node-id or node_id)"))?;
        let proxies = if flags.proxies.is_empty() {
            file.proxies
        } else {
            flags.proxies
        };
        if proxies.is_empty() {
            anyhow::bail!("at least one proxy is required (--proxy URL or proxies = [...])");
        }
        for url in &proxies {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("proxy URL {url:?} must start with http:// or https://");
            }
        }
        let ca_pem = match flags.ca_cert.or(file.ca_cert) {
            Some(path) => {
                if !proxies.iter().any(|u| u.starts_with("https://")) {
                    anyhow::bail!(
                        "ca_cert {} is only used for https:// proxies, and none is given",
                        path.display()
                    );
                }
                let pem = std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read ca_cert {}: {e}", path.display()))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    anyhow::bail!("ca_cert {} holds no PEM certificate", path.display());
                }
                Some(pem)
            }
            None => None,
        };
        let tls_server_name = flags.tls_server_name.or(file.tls_server_name);
        if let Some(name) = &tls_server_name
            && !proxies.iter().any(|u| u.starts_with("https://"))
        {
            anyhow::bail!(
                "tls_server_name {name:?} is only used for https:// proxies, and none is given"
            );
        }
        let token = flags.token.or(file.token).ok_or_else(|| {
            anyhow::anyhow!("a token is required (--token, WES_REPORTER_TOKEN or token)")
        })?;
        let interval = flags
            .interval
            .or(file.interval)
            .unwrap_or(Duration::from_secs(1));
        if interval < Duration::from_millis(50) {
            anyhow::bail!("interval {interval:?} is below the 50ms minimum");
        }
        let sensor = flags.sensor.or(file.sensor).unwrap_or_default();
        let sensor_command = flags.sensor_command.or(file.sensor_command);
        if sensor == SensorChoice::Command && sensor_command.is_none() {
            anyhow::bail!("--sensor command needs --sensor-command CMD");
        }
        // A command sensor runs its command on every read: checks between samples multiply
        // that, so they are the operator's choice there.
        let default_check = match sensor {
            SensorChoice::Command => Duration::ZERO,
            _ => Duration::from_millis(250),
        };
        let thermal_check = flags
            .thermal_check
            .or(file.thermal_check)
            .unwrap_or(default_check);
        if !thermal_check.is_zero() && thermal_check < Duration::from_millis(50) {
            anyhow::bail!(
                "thermal_check {thermal_check:?} is below the 50ms minimum (0s turns it off)"
            );
        }
        let thermal_check =
            (!thermal_check.is_zero() && thermal_check < interval).then_some(thermal_check);
        let probe_interval = flags
            .probe_interval
            .or(file.probe_interval)
            .unwrap_or(Duration::from_secs(300));
        let models_interval = flags
            .models_interval
            .or(file.models_interval)
            .unwrap_or(Duration::from_secs(5));
        // A zero period would make the timers behind them panic at start.
        for (name, value) in [
            ("probe_interval", probe_interval),
            ("models_interval", models_interval),
        ] {
            if value < Duration::from_millis(100) {
                anyhow::bail!("{name} {value:?} is below the 100ms minimum");
            }
        }
        let probe_streams = flags
            .probe_streams
            .or(file.probe_streams)
            .unwrap_or_else(|| vec![2, 4, 8]);
        if let Some(bad) = probe_streams.iter().find(|n| !(2..=16).contains(*n)) {
            anyhow::bail!("probe_streams: {bad} streams; each count must be from 2 to 16");
        }
        if probe_streams.len() > 8 {
            anyhow::bail!("probe_streams: at most 8 counts");
        }
        let model_memory = match flags.model_memory.or(file.model_memory) {
            None => None,
            Some(text) => match text.parse::<bytesize::ByteSize>() {
                Ok(size) if size.as_u64() > 0 => Some(size.as_u64()),
                Ok(_) => anyhow::bail!("model_memory {text:?} must be more than zero"),
                Err(e) => anyhow::bail!("model_memory {text:?} is not a size like \"24GiB\": {e}"),
            },
        };
        let sim_seed = file.sim_seed.unwrap_or_else(|| fnv1a(node_id.as_bytes()));
        Ok(ReporterConfig {
            node_id,
            proxies,
            ca_pem,
            tls_server_name,
            token,
            ollama: flags
                .ollama
                .or(file.ollama)
                .map(|u| u.trim_end_matches('/').to_owned()),
            interval,
            thermal_check,
            sensor,
            sensor_command,
            // A command slower than the interval would pile up readings; cap it there.
            sensor_command_timeout: file
                .sensor_command_timeout
                .unwrap_or(interval.max(Duration::from_millis(500))),
            probe_model: flags.probe_model.or(file.probe_model),
            probe_interval,
            probe_idle_below_pct: file.probe_idle_below_pct.unwrap_or(20.0),
            probe_streams,
            models_interval,
            sysfs_root: flags
                .sysfs_root
                .or(file.sysfs_root)
                .unwrap_or_else(|| PathBuf::from("/sys")),
            model_memory,
            thermal: file.thermal.unwrap_or_default(),
            sim: file.sim.unwrap_or_default(),
            sim_seed,
        })
    }
}

/// A stable seed from the node id, so each simulated node gets its own load pattern.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn flags() -> ReporterFlags {
        ReporterFlags {
            node_id: Some("n1".into()),
            proxies: vec!["http://127.0.0.1:50051".into()],
            token: Some("t".into()),
            ..ReporterFlags::default()
        }
    }

    #[test]
    fn flags_override_file() {
        let file: ReporterFile = toml::from_str(
            r#"
            node_id = "from-file"
            proxies = ["http://a:1"]
            token = "ft"
            interval = "2s"
            "#,
        )
        .unwrap();
        let cfg = ReporterConfig::merge(file, flags()).unwrap();
        assert_eq!(cfg.node_id, "n1");
        assert_eq!(cfg.proxies, vec!["http://127.0.0.1:50051"]);
        assert_eq!(cfg.interval, Duration::from_secs(2));
    }

    #[test]
    fn zero_probe_or_model_intervals_are_refused_not_a_panic_later() {
        let mut f = flags();
        f.probe_interval = Some(Duration::ZERO);
        let err = ReporterConfig::merge(ReporterFile::default(), f).unwrap_err();
        assert!(err.to_string().contains("probe_interval"), "{err}");
        let file: ReporterFile = toml::from_str("models_interval = \"0s\"").unwrap();
        let err = ReporterConfig::merge(file, flags()).unwrap_err();
        assert!(err.to_string().contains("models_interval"), "{err}");
    }

    #[test]
    fn model_memory_is_a_size() {
        let c = ReporterConfig::merge(ReporterFile::default(), flags()).unwrap();
        assert_eq!(c.model_memory, None);
        let file: ReporterFile = toml::from_str("model_memory = \"24GiB\"").unwrap();
        let c = ReporterConfig::merge(file, flags()).unwrap();
        assert_eq!(c.model_memory, Some(24 << 30));
        let mut f = flags();
        f.model_memory = Some("lots".into());
        let err = ReporterConfig::merge(ReporterFile::default(), f).unwrap_err();
        assert!(err.to_string().contains("model_memory \"lots\""), "{err}");
    }

    #[test]
    fn thermal_checks_default_on_except_for_the_command_sensor() {
        let c = ReporterConfig::merge(ReporterFile::default(), flags()).unwrap();
        assert_eq!(c.thermal_check, Some(Duration::from_millis(250)));
        let mut f = flags();
        f.sensor = Some(SensorChoice::Command);
        f.sensor_command = Some("true".into());
        let c = ReporterConfig::merge(ReporterFile::default(), f.clone()).unwrap();
        assert_eq!(c.thermal_check, None);
        f.thermal_check = Some(Duration::from_millis(100));
        let c = ReporterConfig::merge(ReporterFile::default(), f).unwrap();
        assert_eq!(c.thermal_check, Some(Duration::from_millis(100)));
        // Not below the minimum; not when the interval is as short anyway.
        let mut f = flags();
        f.thermal_check = Some(Duration::from_millis(10));
        assert!(ReporterConfig::merge(ReporterFile::default(), f).is_err());
        let mut f = flags();
        f.interval = Some(Duration::from_millis(200));
        let c = ReporterConfig::merge(ReporterFile::default(), f).unwrap();
        assert_eq!(c.thermal_check, None);
    }

    #[test]
    fn probe_streams_default_to_two_four_and_eight_and_are_bounded() {
        let c = ReporterConfig::merge(ReporterFile::default(), flags()).unwrap();
        assert_eq!(c.probe_streams, [2, 4, 8]);
        let file: ReporterFile = toml::from_str("probe_streams = []").unwrap();
        assert!(
            ReporterConfig::merge(file, flags())
                .unwrap()
                .probe_streams
                .is_empty()
        );
        let mut f = flags();
        f.probe_streams = Some(vec![2, 40]);
        let err = ReporterConfig::merge(ReporterFile::default(), f).unwrap_err();
        assert!(err.to_string().contains("40 streams"), "{err}");
    }

    #[test]
    fn missing_and_bad_settings_are_refused() {
        let mut f = flags();
        f.node_id = None;
        assert!(ReporterConfig::merge(ReporterFile::default(), f).is_err());
        let mut f = flags();
        f.proxies = vec!["127.0.0.1:50051".into()];
        let err = ReporterConfig::merge(ReporterFile::default(), f).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let mut f = flags();
        f.sensor = Some(SensorChoice::Command);
        assert!(ReporterConfig::merge(ReporterFile::default(), f).is_err());
    }

    #[test]
    fn ca_cert_is_read_at_start_and_needs_an_https_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut f = flags();
        f.tls_server_name = Some("telemetry.wes.svc".into());
        let err = ReporterConfig::merge(ReporterFile::default(), f.clone()).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        f.tls_server_name = None;
        f.ca_cert = Some(pem.clone());
        let err = ReporterConfig::merge(ReporterFile::default(), f.clone()).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        f.proxies = vec!["https://proxy.example:50051".into()];
        let cfg = ReporterConfig::merge(ReporterFile::default(), f.clone()).unwrap();
        assert!(cfg.ca_pem.is_some_and(|p| p.starts_with(b"-----BEGIN")));
        f.ca_cert = Some(dir.path().join("missing.pem"));
        let err = ReporterConfig::merge(ReporterFile::default(), f.clone()).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::write(&pem, "not a certificate").unwrap();
        f.ca_cert = Some(pem);
        let err = ReporterConfig::merge(ReporterFile::default(), f).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let file: ReporterFile =
            toml::from_str(include_str!("../../config/reporter.example.toml")).unwrap();
        let cfg = ReporterConfig::merge(file, ReporterFlags::default()).unwrap();
        assert_eq!(cfg.node_id, "m2-studio");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<ReporterFile>("nod_id = \"x\"").is_err());
    }
}
