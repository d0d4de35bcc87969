//! Which nodes a management call goes to (docs/design.md, "Model management"). Pure: the
//! caller passes what it knows of each node.

use super::Operation;
use crate::config::PullTo as Placement;

/// What the choice needs to know of one configured node.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// May take traffic now (the ranking's eligibility rule).
    pub healthy: bool,
    /// Its model list holds the call's model (for `copy`, the source).
    pub holds: bool,
    /// Memory free for models as its reporter sees it; `None`: not said.
    pub free_bytes: Option<u64>,
    /// Its penalized WES in the ranking; `None`: unranked.
    pub wes: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NoTargets {
    /// `X-WES-Nodes` named nodes that are not configured: 400.
    Unknown(Vec<String>),
    /// `X-WES-Nodes` was present but named none: 400.
    EmptyHeader,
    /// No node holds the model: 404.
    NotHeld,
    /// No node may take the call now: 503.
    NoneHealthy,
}

impl NoTargets {
    pub fn status(&self) -> u16 {
        match self {
            NoTargets::Unknown(_) | NoTargets::EmptyHeader => 400,
            NoTargets::NotHeld => 404,
            NoTargets::NoneHealthy => 503,
        }
    }

    pub fn message(&self, model: &str) -> String {
        match self {
            NoTargets::Unknown(ids) => {
                format!(
                    "X-WES-Nodes names nodes this proxy does not have: {}",
                    ids.join(", ")
                )
            }
            NoTargets::EmptyHeader => "X-WES-Nodes names no node".to_owned(),
            NoTargets::NotHeld => format!("model '{model}' not found"),
            NoTargets::NoneHealthy => "no node may take model management calls now".to_owned(),
        }
    }
}

/// The ids in an `X-WES-Nodes` value, in order, without repeats.
pub fn parse_header(value: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// The nodes `operation` goes to: those `named` (every one must be configured), else the
/// operation's default set.
pub fn choose(
    operation: Operation,
    candidates: &[Candidate<'_>],
    named: Option<&[String]>,
    placement: Placement,
) -> Result<Vec<String>, NoTargets> {
    if let Some(named) = named {
        if named.is_empty() {
            return Err(NoTargets::EmptyHeader);
        }
        let unknown: Vec<String> = named
            .iter()
            .filter(|id| !candidates.iter().any(|c| c.id == id.as_str()))
            .cloned()
            .collect();
        return if unknown.is_empty() {
            Ok(named.to_vec())
        } else {
            Err(NoTargets::Unknown(unknown))
        };
    }
    let ids = |c: Vec<&Candidate<'_>>| c.iter().map(|c| c.id.to_owned()).collect::<Vec<_>>();
    let healthy: Vec<&Candidate<'_>> = candidates.iter().filter(|c| c.healthy).collect();
    let chosen = match operation {
        Operation::Pull => match placement {
            Placement::All => ids(healthy),
            Placement::Best(n) => {
                let mut best = healthy;
                best.sort_by(|a, b| {
                    b.free_bytes
                        .cmp(&a.free_bytes)
                        .then_with(|| b.wes.unwrap_or(0.0).total_cmp(&a.wes.unwrap_or(0.0)))
                });
                best.truncate(n as usize);
                ids(best)
            }
        },
        Operation::Create | Operation::BlobExists | Operation::BlobUpload => ids(healthy),
        // A node that holds the model is asked whatever its health: it is its store that
        // changes, and an unreachable one is named in the answer.
        Operation::Copy | Operation::Delete => {
            let held: Vec<_> = candidates.iter().filter(|c| c.holds).collect();
            if held.is_empty() {
                return Err(NoTargets::NotHeld);
            }
            ids(held)
        }
        Operation::Push => {
            let mut held: Vec<_> = candidates.iter().filter(|c| c.holds).collect();
            if held.is_empty() {
                return Err(NoTargets::NotHeld);
            }
            held.sort_by(|a, b| {
                b.healthy
                    .cmp(&a.healthy)
                    .then_with(|| b.wes.unwrap_or(0.0).total_cmp(&a.wes.unwrap_or(0.0)))
            });
            held.truncate(1);
            ids(held)
        }
    };
    if chosen.is_empty() {
        return Err(NoTargets::NoneHealthy);
    }
    Ok(chosen)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(
        id: &str,
        healthy: bool,
        holds: bool,
        free: Option<u64>,
        wes: Option<f64>,
    ) -> Candidate<'_> {
        Candidate {
            id,
            healthy,
            holds,
            free_bytes: free,
            wes,
        }
    }

    fn fleet() -> Vec<Candidate<'static>> {
        vec![
            c("a", true, true, Some(10), Some(1.0)),
            c("b", true, false, Some(30), Some(0.5)),
            c("c", false, true, Some(50), Some(3.0)),
            c("d", true, false, Some(30), Some(2.0)),
        ]
    }

    #[test]
    fn defaults_per_operation() {
        let f = fleet();
        let all = Placement::All;
        assert_eq!(
            choose(Operation::Pull, &f, None, all).unwrap(),
            ["a", "b", "d"]
        );
        assert_eq!(
            choose(Operation::Create, &f, None, all).unwrap(),
            ["a", "b", "d"]
        );
        // Holders, the unhealthy one included.
        assert_eq!(
            choose(Operation::Delete, &f, None, all).unwrap(),
            ["a", "c"]
        );
        assert_eq!(choose(Operation::Copy, &f, None, all).unwrap(), ["a", "c"]);
        // One holder, healthy first.
        assert_eq!(choose(Operation::Push, &f, None, all).unwrap(), ["a"]);
    }

    #[test]
    fn pull_placement_takes_free_memory_then_wes() {
        let f = fleet();
        let best = choose(Operation::Pull, &f, None, Placement::Best(2)).unwrap();
        // b and d have the same free memory; d ranks better. c is unhealthy.
        assert_eq!(best, ["d", "b"]);
        let one = choose(Operation::Pull, &f, None, Placement::Best(1)).unwrap();
        assert_eq!(one, ["d"]);
    }

    #[test]
    fn the_header_names_the_nodes_and_unknown_ones_are_refused() {
        let f = fleet();
        let named = parse_header(" c, b ,c,");
        assert_eq!(named, ["c", "b"]);
        assert_eq!(
            choose(Operation::Pull, &f, Some(&named), Placement::All).unwrap(),
            ["c", "b"]
        );
        let bad = parse_header("a,zz,yy");
        let err = choose(Operation::Delete, &f, Some(&bad), Placement::All).unwrap_err();
        assert_eq!(err, NoTargets::Unknown(vec!["zz".into(), "yy".into()]));
        assert_eq!(err.status(), 400);
        assert!(err.message("m").ends_with("zz, yy"));
        let empty = parse_header(" , ");
        assert_eq!(
            choose(Operation::Pull, &f, Some(&empty), Placement::All).unwrap_err(),
            NoTargets::EmptyHeader
        );
    }

    #[test]
    fn nothing_to_do_is_said() {
        let none_hold = vec![c("a", true, false, None, None)];
        let err = choose(Operation::Delete, &none_hold, None, Placement::All).unwrap_err();
        assert_eq!(
            (err.status(), err.message("m")),
            (404, "model 'm' not found".to_owned())
        );
        let sick = vec![c("a", false, true, None, None)];
        let err = choose(Operation::Pull, &sick, None, Placement::All).unwrap_err();
        assert_eq!(err.status(), 503);
    }
}
