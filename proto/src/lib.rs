//! The gRPC telemetry contract (`wes.telemetry.v1`) shared by `wes-reporter` and `wes-proxy`.

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod telemetry {
    pub mod v1 {
        tonic::include_proto!("wes.telemetry.v1");
    }
}

pub use telemetry::v1::*;

/// An error and its causes on one line, each cause once: tonic's transport errors hide the
/// useful part (a refused certificate, a bad key) in their sources, and some sources repeat
/// their own source in their text.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

impl ThermalState {
    /// The name operators see in `/ranking` and write in config and the command sensor.
    pub fn display_name(self) -> &'static str {
        match self {
            ThermalState::Unknown => "Unknown",
            ThermalState::Normal => "Normal",
            ThermalState::Fair => "Fair",
            ThermalState::Serious => "Serious",
            ThermalState::Critical => "Critical",
        }
    }

    /// Parses one of the five names of docs/contract.md, Telemetry protocol (case-insensitive).
    pub fn from_display_name(name: &str) -> Option<Self> {
        [
            ThermalState::Unknown,
            ThermalState::Normal,
            ThermalState::Fair,
            ThermalState::Serious,
            ThermalState::Critical,
        ]
        .into_iter()
        .find(|s| s.display_name().eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thermal_names_round_trip() {
        for s in [
            ThermalState::Unknown,
            ThermalState::Normal,
            ThermalState::Fair,
            ThermalState::Serious,
            ThermalState::Critical,
        ] {
            assert_eq!(ThermalState::from_display_name(s.display_name()), Some(s));
        }
        assert_eq!(
            ThermalState::from_display_name("critical"),
            Some(ThermalState::Critical)
        );
        assert_eq!(ThermalState::from_display_name("hot"), None);
    }
}
