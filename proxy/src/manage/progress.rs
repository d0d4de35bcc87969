//! Merges the NDJSON progress of one management call on several nodes into the one stream an
//! Ollama client expects (docs/design.md, "Model management"): one bar per digest, its total
//! and completed bytes summed over the nodes; each status line once; `success` only when every
//! node succeeded, else an error naming each node that failed. Pure: lines in, lines out.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

/// How one node's part ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Running,
    Succeeded,
    /// The HTTP status it answers with (500 for an error line inside a 200 stream, as Ollama's
    /// non-streamed pull answers; 502 where the node could not be reached or broke off) and
    /// what it said.
    Failed {
        status: u16,
        message: String,
    },
}

/// One node's progress on one digest.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes {
    total: u64,
    completed: u64,
}

#[derive(Debug)]
struct NodePart {
    id: String,
    part: Part,
    digests: BTreeMap<String, Bytes>,
}

/// The merged progress of one call.
#[derive(Debug)]
pub struct Progress {
    /// What the call did, for the final error: "pull llama3.2".
    what: String,
    nodes: Vec<NodePart>,
    /// Status lines already passed on.
    said: HashSet<String>,
}

/// The call's answer once every node has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// 200 when every node succeeded; else the status the failed nodes agree on, or 502.
    pub status: u16,
    /// `{"status": "success"}` or `{"error": "..."}`.
    pub line: Value,
}

impl Progress {
    pub fn new(what: impl Into<String>, nodes: &[String]) -> Self {
        Progress {
            what: what.into(),
            nodes: nodes
                .iter()
                .map(|id| NodePart {
                    id: id.clone(),
                    part: Part::Running,
                    digests: BTreeMap::new(),
                })
                .collect(),
            said: HashSet::new(),
        }
    }

    /// One line node `i` sent; the merged lines to pass on (none, or one).
    pub fn feed(&mut self, i: usize, line: &Value) -> Vec<Value> {
        if self.nodes.get(i).is_none_or(|n| n.part != Part::Running) {
            return Vec::new();
        }
        if let Some(error) = line.get("error") {
            let message = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return self.fail(i, 500, message);
        }
        let status = line.get("status").and_then(Value::as_str).unwrap_or("");
        if status == "success" {
            self.nodes[i].part = Part::Succeeded;
            return Vec::new();
        }
        if let Some(digest) = line.get("digest").and_then(Value::as_str) {
            let field = |k: &str| line.get(k).and_then(Value::as_u64).unwrap_or(0);
            let bytes = Bytes {
                total: field("total"),
                completed: field("completed"),
            };
            self.nodes[i].digests.insert(digest.to_owned(), bytes);
            let (total, completed) = self.digest_sums(digest);
            return vec![json!({
                "status": status,
                "digest": digest,
                "total": total,
                "completed": completed,
            })];
        }
        self.say(status)
    }

    /// Node `i` failed outright: its connection, its answer's status, or its stream broke.
    pub fn fail(&mut self, i: usize, status: u16, message: String) -> Vec<Value> {
        let Some(node) = self.nodes.get_mut(i) else {
            return Vec::new();
        };
        if node.part != Part::Running {
            return Vec::new();
        }
        let line = format!("node {} failed: {message}", node.id);
        node.part = Part::Failed { status, message };
        self.say(&line)
    }

    /// Node `i`'s stream ended: without a `success` it did not finish.
    pub fn end(&mut self, i: usize) -> Vec<Value> {
        self.fail(i, 502, "its answer ended before it said success".to_owned())
    }

    pub fn running(&self) -> bool {
        self.nodes.iter().any(|n| n.part == Part::Running)
    }

    pub fn part(&self, i: usize) -> Option<&Part> {
        self.nodes.get(i).map(|n| &n.part)
    }

    /// The answer once no node is running.
    pub fn outcome(&self) -> Outcome {
        let failed: Vec<(&str, u16, &str)> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.part {
                Part::Failed { status, message } => {
                    Some((n.id.as_str(), *status, message.as_str()))
                }
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            return Outcome {
                status: 200,
                line: json!({ "status": "success" }),
            };
        }
        let status = if failed.iter().all(|f| f.1 == failed[0].1) {
            failed[0].1
        } else {
            502
        };
        let reasons: Vec<String> = failed
            .iter()
            .map(|(id, _, message)| format!("{id}: {message}"))
            .collect();
        let succeeded: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.part == Part::Succeeded)
            .map(|n| n.id.as_str())
            .collect();
        let mut message = format!(
            "{} failed on {} of {} nodes ({})",
            self.what,
            failed.len(),
            self.nodes.len(),
            reasons.join("; ")
        );
        if !succeeded.is_empty() {
            message.push_str(&format!("; it succeeded on {}", succeeded.join(", ")));
        }
        Outcome {
            status,
            line: json!({ "error": message }),
        }
    }

    /// A digest's bytes over the nodes still in it: those that reported it, plus, at the size
    /// the others reported (a digest names its content, so its size is the same everywhere),
    /// those still running that have not reached it yet. Failed nodes leave the sums.
    fn digest_sums(&self, digest: &str) -> (u64, u64) {
        let known = self
            .nodes
            .iter()
            .filter_map(|n| n.digests.get(digest))
            .map(|b| b.total)
            .max()
            .unwrap_or(0);
        let mut sums = (0u64, 0u64);
        for n in &self.nodes {
            if matches!(n.part, Part::Failed { .. }) {
                continue;
            }
            match n.digests.get(digest) {
                Some(b) => {
                    sums.0 += b.total;
                    sums.1 += b.completed;
                }
                None if n.part == Part::Running => sums.0 += known,
                None => {}
            }
        }
        sums
    }

    /// A status line the first time any node says it.
    fn say(&mut self, status: &str) -> Vec<Value> {
        if status.is_empty() || !self.said.insert(status.to_owned()) {
            return Vec::new();
        }
        vec![json!({ "status": status })]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn layer(digest: &str, total: u64, completed: u64) -> Value {
        json!({"status": "pulling abc", "digest": digest, "total": total, "completed": completed})
    }

    #[test]
    fn one_bar_per_digest_summed_over_the_nodes() {
        let mut p = Progress::new("pull m", &nodes(&["a", "b", "c"]));
        assert_eq!(
            p.feed(0, &json!({"status": "pulling manifest"})),
            vec![json!({"status": "pulling manifest"})]
        );
        // Said once, whoever says it next.
        assert!(p.feed(1, &json!({"status": "pulling manifest"})).is_empty());
        // b and c have not reached the layer: counted at a's size, nothing done.
        let out = p.feed(0, &layer("sha256:1", 100, 40));
        assert_eq!(out[0]["total"], 300);
        assert_eq!(out[0]["completed"], 40);
        assert_eq!(out[0]["digest"], "sha256:1");
        let out = p.feed(1, &layer("sha256:1", 100, 100));
        assert_eq!(
            (out[0]["total"].as_u64(), out[0]["completed"].as_u64()),
            (Some(300), Some(140))
        );
    }

    #[test]
    fn success_only_when_every_node_succeeded() {
        let mut p = Progress::new("pull m", &nodes(&["a", "b"]));
        assert!(p.feed(0, &json!({"status": "success"})).is_empty());
        assert!(p.running());
        p.feed(1, &json!({"status": "success"}));
        assert!(!p.running());
        assert_eq!(
            p.outcome(),
            Outcome {
                status: 200,
                line: json!({"status": "success"})
            }
        );
    }

    #[test]
    fn a_failed_node_is_named_and_leaves_the_sums() {
        let mut p = Progress::new("pull m", &nodes(&["a", "b", "c"]));
        p.feed(0, &layer("sha256:1", 100, 50));
        p.feed(1, &layer("sha256:1", 100, 50));
        let said = p.fail(1, 502, "connection reset".into());
        assert_eq!(
            said,
            vec![json!({"status": "node b failed: connection reset"})]
        );
        let out = p.feed(0, &layer("sha256:1", 100, 60));
        // a and c (not started) remain.
        assert_eq!(
            (out[0]["total"].as_u64(), out[0]["completed"].as_u64()),
            (Some(200), Some(60))
        );
        // Lines after the failure are not taken.
        assert!(p.feed(1, &json!({"status": "success"})).is_empty());
        p.feed(0, &json!({"status": "success"}));
        p.feed(
            2,
            &json!({"error": "pull model manifest: file does not exist"}),
        );
        let o = p.outcome();
        assert_eq!(o.status, 502, "two failures with different statuses");
        let message = o.line["error"].as_str().unwrap();
        assert!(
            message.starts_with("pull m failed on 2 of 3 nodes"),
            "{message}"
        );
        assert!(message.contains("b: connection reset"), "{message}");
        assert!(
            message.contains("c: pull model manifest: file does not exist"),
            "{message}"
        );
        assert!(message.ends_with("it succeeded on a"), "{message}");
    }

    #[test]
    fn failures_that_agree_keep_their_status_and_an_unfinished_stream_fails() {
        let mut p = Progress::new("create x", &nodes(&["a", "b"]));
        p.fail(0, 404, "model not found".into());
        p.fail(1, 404, "model not found".into());
        assert_eq!(p.outcome().status, 404);
        let mut p = Progress::new("pull m", &nodes(&["a"]));
        p.feed(0, &json!({"status": "pulling manifest"}));
        p.end(0);
        assert_eq!(p.outcome().status, 502);
        // Ending after success changes nothing.
        let mut p = Progress::new("pull m", &nodes(&["a"]));
        p.feed(0, &json!({"status": "success"}));
        p.end(0);
        assert_eq!(p.outcome().status, 200);
    }
}
