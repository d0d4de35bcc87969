//! The one rule for whether a node may take traffic now. The board shows its reason, the
//! routing table leaves such a node out, and merged listings (`/api/tags`, ...) ask only the
//! nodes it lets through.

use std::time::Instant;

use crate::config::{HealthConfig, RoutingConfig};
use crate::fleet::{NodeState, Telemetry};

/// Why a node must not take traffic now, or `None` when it may: no telemetry, stale telemetry,
/// an excluded thermal state, or the health verdict (draining, open circuit, failed check).
pub fn unavailable_reason(
    telemetry: Option<&Telemetry>,
    state: &NodeState,
    routing: &RoutingConfig,
    health: &HealthConfig,
    now: Instant,
) -> Option<String> {
    let Some(t) = telemetry else {
        return Some("no telemetry yet".to_owned());
    };
    if now.saturating_duration_since(t.received_at) > routing.stale_after {
        return Some(format!(
            "telemetry older than {}",
            humantime::format_duration(routing.stale_after)
        ));
    }
    if routing.exclude_thermal.contains(&t.thermal) {
        return Some(format!(
            "thermal state {} is excluded",
            t.thermal.display_name()
        ));
    }
    state.health.problem(now, health.cooldown)
}
