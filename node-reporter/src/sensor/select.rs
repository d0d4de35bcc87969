//! Opens the sensor backend the settings name, and says why in words for the log.

use std::path::PathBuf;
use std::time::Duration;

use wes_proto::SensorKind;

use crate::config::{ReporterConfig, ReporterFlags, SensorChoice};
use crate::sensor::sim::{SimParams, SimSensor};
use crate::sensor::thermal::ThermalThresholds;
use crate::sensor::{Reading, Sensor, apple, auto, command, linux, nvml};

/// The part of the reporter's settings a sensor needs.
#[derive(Debug, Clone)]
pub struct SensorSettings {
    pub choice: SensorChoice,
    pub command: Option<String>,
    pub command_timeout: Duration,
    pub sysfs_root: PathBuf,
    pub thermal: ThermalThresholds,
    pub sim: SimParams,
    pub sim_seed: u64,
    pub interval: Duration,
}

impl ReporterConfig {
    pub fn sensor_settings(&self) -> SensorSettings {
        SensorSettings {
            choice: self.sensor,
            command: self.sensor_command.clone(),
            command_timeout: self.sensor_command_timeout,
            sysfs_root: self.sysfs_root.clone(),
            thermal: self.thermal.clone(),
            sim: self.sim.clone(),
            sim_seed: self.sim_seed,
            interval: self.interval,
        }
    }
}

impl SensorSettings {
    /// For `read-sensor`, which needs no node id, proxy or token.
    pub fn from_flags(flags: &ReporterFlags) -> anyhow::Result<Self> {
        let interval = flags.interval.unwrap_or(Duration::from_secs(1));
        let choice = flags.sensor.unwrap_or_default();
        if choice == SensorChoice::Command && flags.sensor_command.is_none() {
            anyhow::bail!("--sensor command needs --sensor-command CMD");
        }
        Ok(SensorSettings {
            choice,
            command: flags.sensor_command.clone(),
            command_timeout: interval.max(Duration::from_millis(500)),
            sysfs_root: flags
                .sysfs_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/sys")),
            thermal: ThermalThresholds::default(),
            sim: SimParams::default(),
            sim_seed: 1,
            interval,
        })
    }
}

/// A sensor named explicitly must open, or the reporter refuses to start: an operator who
/// asked for NVML wants to hear that it is missing, not to get silent unknowns.
pub fn open(settings: &SensorSettings) -> anyhow::Result<(Box<dyn Sensor>, String)> {
    let opened: (Box<dyn Sensor>, String) = match settings.choice {
        SensorChoice::Auto => auto::detect(&auto::AutoOptions {
            sysfs_root: settings.sysfs_root.clone(),
            command: settings.command.clone(),
            command_timeout: settings.command_timeout,
            thresholds: settings.thermal.clone(),
        }),
        SensorChoice::Nvml => (
            Box::new(nvml::open_real(settings.thermal.clone()).map_err(anyhow::Error::msg)?),
            "nvml (asked for)".into(),
        ),
        SensorChoice::Apple => (
            Box::new(apple::AppleSensor::open().map_err(anyhow::Error::msg)?),
            "apple (asked for)".into(),
        ),
        SensorChoice::Linux => (
            Box::new(linux::LinuxSensor::new(
                settings.sysfs_root.clone(),
                settings.thermal.clone(),
            )),
            format!(
                "linux (asked for), sysfs at {}",
                settings.sysfs_root.display()
            ),
        ),
        SensorChoice::Command => {
            let cmd = settings
                .command
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--sensor command needs --sensor-command CMD"))?;
            (
                Box::new(command::CommandSensor::new(
                    cmd.clone(),
                    settings.command_timeout,
                )),
                format!("command (asked for): sh -c {cmd:?}"),
            )
        }
        SensorChoice::Sim => (
            Box::new(SimSensor::new(settings.sim.clone(), settings.sim_seed)),
            "sim (asked for): simulated power and thermal model".into(),
        ),
    };
    Ok(opened)
}

/// One reading as a JSON line, for `read-sensor`.
pub fn reading_json(kind: SensorKind, r: &Reading) -> serde_json::Value {
    serde_json::json!({
        "sensor": kind.as_str_name(),
        "watts": r.watts,
        "energy_joules": r.energy_joules,
        "thermal_state": r.thermal.display_name(),
        "temperature_c": r.temperature_c,
        "power_capped": r.power_capped,
        "throttle_reasons": format!("{:#x}", r.throttle_reasons),
        "cpu_throttled": r.cpu_throttled,
        "utilization_pct": r.utilization_pct,
        "errors": r.errors,
    })
}
