//! Fleet model management (docs/design.md, "Model management"): Ollama's `pull`, `push`,
//! `create`, `copy`, `delete` and blob calls sent to a set of nodes at once and answered as one
//! Ollama answers them, so that `ollama pull` against the proxy installs a model fleet-wide
//! behind one progress bar.
//!
//! - `targets`: which nodes a call goes to (pure).
//! - `progress`: the nodes' NDJSON progress merged into one stream (pure).
//! - `fanout`: the calls themselves, over HTTP, and the answer written to the client.
//! - `blobs`: blob checks and uploads, the body streamed to every node at once.

mod blobs;
mod fanout;
pub mod progress;
pub mod targets;

use std::time::{Duration, Instant};

use pingora::proxy::Session;
use serde_json::Value;

use crate::config::Config;
use crate::fleet::{FleetView, model_name};
use crate::ranking::eligibility::unavailable_reason;
use crate::relay::respond::{self, ErrorShape};
use crate::state::AppState;

/// Names the nodes a call goes to instead of the operation's default set.
pub const NODES_HEADER: &str = "x-wes-nodes";

/// One model-management call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /api/pull`
    Pull,
    /// `POST /api/push`
    Push,
    /// `POST /api/create`
    Create,
    /// `POST /api/copy`
    Copy,
    /// `DELETE /api/delete`
    Delete,
    /// `HEAD /api/blobs/:digest`
    BlobExists,
    /// `POST /api/blobs/:digest`
    BlobUpload,
}

impl Operation {
    /// The operation a method and path name; `None` for a management path with the wrong
    /// method.
    pub fn of(method: &str, path: &str) -> Option<Operation> {
        let op = match path {
            "/api/pull" => Operation::Pull,
            "/api/push" => Operation::Push,
            "/api/create" => Operation::Create,
            "/api/copy" => Operation::Copy,
            "/api/delete" => Operation::Delete,
            _ if path.starts_with("/api/blobs/") => {
                return match method {
                    "HEAD" => Some(Operation::BlobExists),
                    "POST" => Some(Operation::BlobUpload),
                    _ => None,
                };
            }
            _ => return None,
        };
        let wanted = if op == Operation::Delete {
            "DELETE"
        } else {
            "POST"
        };
        (method == wanted).then_some(op)
    }

    /// Whether `path` is one of the management paths, whatever the method.
    pub fn is_management_path(path: &str) -> bool {
        matches!(
            path,
            "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete"
        ) || path.starts_with("/api/blobs/")
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Pull => "pull",
            Operation::Push => "push",
            Operation::Create => "create",
            Operation::Copy => "copy",
            Operation::Delete => "delete",
            Operation::BlobExists => "blob check",
            Operation::BlobUpload => "blob upload",
        }
    }

    /// Answers in Ollama's progress lines.
    fn progresses(self) -> bool {
        matches!(self, Operation::Pull | Operation::Push | Operation::Create)
    }

    /// Changes what a node holds: its reporter is asked to re-read the model list.
    fn changes_models(self) -> bool {
        matches!(
            self,
            Operation::Pull | Operation::Create | Operation::Copy | Operation::Delete
        )
    }
}

/// What a call names: its model (for `copy`, the source), or its blob's digest.
fn subject(operation: Operation, body: &Value, path: &str) -> Result<String, String> {
    if matches!(operation, Operation::BlobExists | Operation::BlobUpload) {
        let digest = path.trim_start_matches("/api/blobs/");
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        return if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(digest.to_owned())
        } else {
            Err(format!(
                "invalid digest {digest:?}: want sha256: and 64 hex digits"
            ))
        };
    }
    let field = if operation == Operation::Copy {
        "source"
    } else {
        "model"
    };
    // Ollama still takes the older `name`.
    [field, "name"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{field} is required"))
}

/// The nodes a call goes to, from the fleet as it is now.
fn targets(
    state: &AppState,
    config: &Config,
    view: &FleetView,
    operation: Operation,
    model: &str,
    named: Option<&[String]>,
) -> Result<Vec<String>, targets::NoTargets> {
    let now = Instant::now();
    let ranking = state.ranking.load();
    let candidates: Vec<targets::Candidate<'_>> = view
        .nodes
        .iter()
        .map(|n| {
            let telemetry = n.state.telemetry();
            let t = telemetry.as_deref();
            let healthy =
                unavailable_reason(t, &n.state, &config.routing, &config.health, now).is_none();
            let holds = t
                .and_then(|t| t.models.as_ref())
                .is_some_and(|ms| ms.iter().any(|m| model_name::same(m, model)));
            let free_bytes = t.and_then(|t| t.residency.as_ref()).and_then(|r| {
                let used: u64 = r.loaded.iter().map(|m| m.size_vram_bytes).sum();
                r.memory_bytes.map(|m| m.saturating_sub(used))
            });
            let wes = ranking
                .board
                .nodes
                .iter()
                .find(|e| e.id == n.config.id)
                .and_then(|e| e.wes.penalized);
            targets::Candidate {
                id: &n.config.id,
                healthy,
                holds,
                free_bytes,
                wes,
            }
        })
        .collect();
    targets::choose(operation, &candidates, named, config.models.pull_to)
}

/// Answers one management call whose caller holds the admin token.
pub async fn handle(
    state: &AppState,
    http: &reqwest::Client,
    session: &mut Session,
    config: &Config,
    operation: Operation,
) -> pingora::Result<()> {
    let path = session
        .req_header()
        .uri
        .path()
        .trim_end_matches('/')
        .to_owned();
    let caller = session
        .client_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    // Blob bodies are the blob: streamed on, never read whole.
    let body = if operation == Operation::BlobUpload || operation == Operation::BlobExists {
        Value::Null
    } else {
        match crate::relay::read_json_body(session, config.api.max_body_bytes).await? {
            Ok(v) => v,
            Err((status, message)) => {
                return respond::error(session, ErrorShape::Ollama, status, &message).await;
            }
        }
    };
    let subject = match subject(operation, &body, &path) {
        Ok(s) => s,
        Err(message) => return respond::error(session, ErrorShape::Ollama, 400, &message).await,
    };
    let named = session
        .req_header()
        .headers
        .get(NODES_HEADER)
        .map(|v| targets::parse_header(v.to_str().unwrap_or("")));
    let view = state.fleet.view();
    // Blobs are content-addressed: every node a create goes to needs them.
    let model = if matches!(operation, Operation::BlobExists | Operation::BlobUpload) {
        ""
    } else {
        &subject
    };
    let ids = match targets(state, config, &view, operation, model, named.as_deref()) {
        Ok(ids) => ids,
        Err(no) => {
            let status = no.status();
            tracing::info!(operation = operation.name(), %subject, %caller, "management call refused: {}", no.message(model));
            return respond::error(session, ErrorShape::Ollama, status, &no.message(&subject))
                .await;
        }
    };
    let nodes: Vec<fanout::Target> = ids
        .iter()
        .filter_map(|id| view.get(id))
        .map(|n| fanout::Target {
            id: n.config.id.clone(),
            url: n.config.url.trim_end_matches('/').to_owned(),
        })
        .collect();
    let started = Instant::now();
    let succeeded = match operation {
        Operation::BlobExists => blobs::exists(http, session, &nodes, &path).await?,
        Operation::BlobUpload => blobs::upload(http, session, &nodes, &path).await?,
        _ if operation.progresses() => {
            fanout::progress(http, session, &nodes, operation, &path, body, &subject).await?
        }
        _ => fanout::plain(http, session, &nodes, operation, &path, &body, &subject).await?,
    };
    tracing::info!(
        operation = operation.name(),
        %subject,
        %caller,
        nodes = %ids.join(","),
        succeeded = %succeeded.join(","),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "management call"
    );
    if operation.changes_models() {
        for id in &succeeded {
            state.fleet.refresh_models(id);
        }
    }
    Ok(())
}

/// How long a node may stay silent inside a management answer: a pull's progress and a
/// create's status lines come every few seconds at worst.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

/// The HTTP client management calls use: no limit on a whole call (a pull may take an hour),
/// a limit on silence.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(IDLE_LIMIT)
        .build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_by_method_and_path() {
        assert_eq!(Operation::of("POST", "/api/pull"), Some(Operation::Pull));
        assert_eq!(
            Operation::of("DELETE", "/api/delete"),
            Some(Operation::Delete)
        );
        assert_eq!(Operation::of("POST", "/api/delete"), None);
        assert_eq!(Operation::of("GET", "/api/pull"), None);
        let blob = "/api/blobs/sha256:00";
        assert_eq!(Operation::of("HEAD", blob), Some(Operation::BlobExists));
        assert_eq!(Operation::of("POST", blob), Some(Operation::BlobUpload));
        assert_eq!(Operation::of("GET", blob), None);
        assert!(Operation::is_management_path(blob));
        assert!(!Operation::is_management_path("/api/chat"));
    }

    #[test]
    fn the_subject_of_each_call() {
        let pull = json!({"model": " llama3.2 "});
        assert_eq!(subject(Operation::Pull, &pull, "").unwrap(), "llama3.2");
        assert_eq!(
            subject(Operation::Delete, &json!({"name": "m"}), "").unwrap(),
            "m"
        );
        let copy = json!({"source": "a", "destination": "b"});
        assert_eq!(subject(Operation::Copy, &copy, "").unwrap(), "a");
        assert_eq!(
            subject(Operation::Pull, &json!({}), "").unwrap_err(),
            "model is required"
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        let path = format!("/api/blobs/{digest}");
        assert_eq!(
            subject(Operation::BlobExists, &Value::Null, &path).unwrap(),
            digest
        );
        assert!(subject(Operation::BlobUpload, &Value::Null, "/api/blobs/sha256:xyz").is_err());
    }
}
