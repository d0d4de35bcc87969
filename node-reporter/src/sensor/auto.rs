//! `--sensor auto`: picks the first backend that works on this machine, in the order NVML,
//! Apple, Linux, command, and says what it chose and why it skipped the others, so an
//! operator reading the log knows why a node reports what it reports.
//!
//! `sim` is never chosen: a simulated node must be asked for by name, or a broken sensor
//! setup would quietly report made-up numbers.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use wes_proto::SensorKind;

use super::command::CommandSensor;
use super::linux::{self, LinuxSensor};
use super::{Reading, Sensor, apple, nvml};
use crate::sensor::thermal::ThermalThresholds;

#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// `/sys` on a real machine; a fixture tree in tests.
    pub sysfs_root: PathBuf,
    /// `--sensor-command`, if given; tried last.
    pub command: Option<String>,
    pub command_timeout: Duration,
    pub thresholds: ThermalThresholds,
}

impl Default for AutoOptions {
    fn default() -> Self {
        AutoOptions {
            sysfs_root: PathBuf::from("/sys"),
            command: None,
            command_timeout: Duration::from_secs(5),
            thresholds: ThermalThresholds::default(),
        }
    }
}

/// The sensor of a node where nothing could be used: every reading is unknown, with the
/// reasons gathered at detection.
pub struct NoSensor {
    reason: String,
}

impl NoSensor {
    pub fn new(reason: impl Into<String>) -> Self {
        NoSensor {
            reason: reason.into(),
        }
    }
}

impl Sensor for NoSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::None
    }

    fn read(&mut self) -> BoxFuture<'_, Reading> {
        let reading = Reading::unknown(format!("no sensor found: {}", self.reason));
        Box::pin(async move { reading })
    }
}

/// Returns the chosen sensor and one line explaining the choice.
pub fn detect(opts: &AutoOptions) -> (Box<dyn Sensor>, String) {
    detect_with(
        opts,
        Probes {
            nvml: true,
            apple: true,
        },
    )
}

/// Which hardware backends to try; tests turn them off so a result does not depend on the
/// machine they run on.
#[derive(Debug, Clone, Copy)]
struct Probes {
    nvml: bool,
    apple: bool,
}

fn detect_with(opts: &AutoOptions, probes: Probes) -> (Box<dyn Sensor>, String) {
    let mut skipped: Vec<String> = Vec::new();
    let explain = |chosen: &str, why: &str, skipped: &[String]| {
        let mut line = format!("sensor auto: chose {chosen} ({why})");
        if !skipped.is_empty() {
            line.push_str("; skipped ");
            line.push_str(&skipped.join("; "));
        }
        line
    };

    if probes.nvml {
        match nvml::open_real(opts.thresholds.clone()) {
            Ok(sensor) => {
                return (
                    Box::new(sensor),
                    explain("nvml", "NVML sees at least one GPU", &skipped),
                );
            }
            Err(e) => skipped.push(format!("nvml: {e}")),
        }
    } else {
        skipped.push("nvml: not probed".to_string());
    }

    if probes.apple {
        match apple::AppleSensor::open() {
            Ok(sensor) => {
                let why = "macOS thermal pressure, IOReport energy";
                return (Box::new(sensor), explain("apple", why, &skipped));
            }
            Err(e) => skipped.push(format!("apple: {e}")),
        }
    } else {
        skipped.push("apple: not probed".to_string());
    }

    match linux::probe(&opts.sysfs_root) {
        Ok(found) => {
            let sensor = LinuxSensor::new(opts.sysfs_root.clone(), opts.thresholds.clone());
            return (Box::new(sensor), explain("linux", &found, &skipped));
        }
        Err(e) => skipped.push(format!("linux: {e}")),
    }

    match &opts.command {
        Some(cmd) => {
            let sensor = CommandSensor::new(cmd.clone(), opts.command_timeout);
            (
                Box::new(sensor),
                explain("command", &format!("`{cmd}`"), &skipped),
            )
        }
        None => {
            skipped.push("command: no --sensor-command given".to_string());
            let reason = skipped.join("; ");
            let line = format!("sensor auto: no sensor found, readings will be unknown: {reason}");
            (Box::new(NoSensor::new(reason)), line)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sensor::linux::copy_fixture;
    use wes_proto::ThermalState;

    fn opts(root: &std::path::Path, command: Option<&str>) -> AutoOptions {
        AutoOptions {
            sysfs_root: root.to_path_buf(),
            command: command.map(str::to_string),
            ..AutoOptions::default()
        }
    }

    const NO_HARDWARE: Probes = Probes {
        nvml: false,
        apple: false,
    };

    #[tokio::test]
    async fn linux_fixture_is_chosen_over_command() {
        let dir = copy_fixture("sysfs-desktop");
        let (mut sensor, why) = detect_with(&opts(dir.path(), Some("echo '{}'")), NO_HARDWARE);
        assert_eq!(sensor.kind(), SensorKind::Linux);
        assert!(
            why.starts_with("sensor auto: chose linux (RAPL energy from 1 zone(s)"),
            "{why}"
        );
        assert!(
            why.contains("skipped nvml: not probed; apple: not probed"),
            "{why}"
        );
        assert_eq!(sensor.read().await.thermal, ThermalState::Normal);
    }

    #[test]
    fn temperatures_alone_are_enough_for_linux() {
        let dir = copy_fixture("sysfs-norapl");
        let (sensor, why) = detect_with(&opts(dir.path(), None), NO_HARDWARE);
        assert_eq!(sensor.kind(), SensorKind::Linux);
        assert!(why.contains("power unknown: no RAPL zone"), "{why}");
    }

    #[tokio::test]
    async fn command_when_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sensor, why) = detect_with(
            &opts(dir.path(), Some(r#"echo '{"watts": 7}'"#)),
            NO_HARDWARE,
        );
        assert_eq!(sensor.kind(), SensorKind::Command);
        assert!(why.contains("chose command"), "{why}");
        assert!(why.contains("linux: no readable RAPL counter"), "{why}");
        assert_eq!(sensor.read().await.watts, Some(7.0));
    }

    #[tokio::test]
    async fn none_with_every_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sensor, why) = detect_with(&opts(dir.path(), None), NO_HARDWARE);
        assert_eq!(sensor.kind(), SensorKind::None);
        assert!(why.contains("no sensor found"), "{why}");
        let r = sensor.read().await;
        assert_eq!(r.thermal, ThermalState::Unknown);
        assert_eq!(r.watts, None);
        let e = &r.errors[0];
        assert!(e.starts_with("no sensor found: nvml: not probed"), "{e}");
        assert!(e.contains("linux: no readable RAPL counter"), "{e}");
        assert!(e.contains("command: no --sensor-command given"), "{e}");
    }

    #[test]
    fn real_probes_explain_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let (sensor, why) = detect(&opts(dir.path(), None));
        // On a machine with a GPU (or a Mac) the hardware wins; elsewhere each skip is named.
        if sensor.kind() == SensorKind::None {
            assert!(why.contains("nvml: NVML"), "{why}");
            if cfg!(not(target_os = "macos")) {
                assert!(
                    why.contains("apple: the apple sensor works only on macOS"),
                    "{why}"
                );
            }
        }
        assert_ne!(sensor.kind(), SensorKind::Sim);
    }
}
