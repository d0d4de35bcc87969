//! The calls of one management operation, made on every target node at once, and the one
//! answer the client gets.

use bytes::Bytes;
use futures::StreamExt;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Operation;
use super::progress::{Part, Progress};
use crate::meter::lines::{LINE_CAP, LineSplitter, Piece};
use crate::relay::respond;

/// A node a call goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    /// Its Ollama's base URL, without a trailing `/`.
    pub url: String,
}

/// What one node's answer did, as its task sees it.
enum Event {
    Line(Value),
    Failed(u16, String),
    Ended,
}

/// Names the nodes a response came from.
fn nodes_header(nodes: &[Target]) -> String {
    nodes
        .iter()
        .map(|n| n.id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A node's refusal as the client should read it: Ollama's `error` field, else the text.
pub async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(300).collect()
            }
        });
    (status, message)
}

/// Why a node could not be asked, without reqwest's URL noise.
pub fn unreachable(e: &reqwest::Error) -> String {
    let mut message = if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_timeout() {
        "went silent".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}

/// Pull, push or create on every target, the nodes' progress merged into one stream (or one
/// object when the client asked `"stream": false`). Returns the nodes that succeeded.
pub async fn progress(
    http: &reqwest::Client,
    session: &mut Session,
    nodes: &[Target],
    operation: Operation,
    path: &str,
    mut body: Value,
    subject: &str,
) -> pingora::Result<Vec<String>> {
    let streamed = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    // The nodes always stream: a node that dies part-way is then seen at once.
    body["stream"] = json!(true);
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let mut merged = Progress::new(format!("{} {subject}", operation.name()), &ids);
    let (tx, mut rx) = mpsc::channel::<(usize, Event)>(64);
    let body = Bytes::from(body.to_string());
    for (i, node) in nodes.iter().enumerate() {
        let request = http
            .post(format!("{}{path}", node.url))
            .header("content-type", "application/json")
            .body(body.clone());
        tokio::spawn(node_progress(request, i, tx.clone()));
    }
    drop(tx);
    if streamed {
        let mut header = ResponseHeader::build(200, Some(3))?;
        header.insert_header("Content-Type", "application/x-ndjson")?;
        header.insert_header("Transfer-Encoding", "chunked")?;
        header.insert_header("X-WES-Nodes", nodes_header(nodes))?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
    }
    // The client hanging up ends the call here: the node tasks find their channel closed and
    // drop their connections, which cancels the nodes' work as Ollama cancels it.
    while let Some((i, event)) = rx.recv().await {
        let lines = match event {
            Event::Line(v) => merged.feed(i, &v),
            Event::Failed(status, message) => merged.fail(i, status, message),
            Event::Ended => merged.end(i),
        };
        if streamed && !lines.is_empty() {
            session
                .write_response_body(Some(ndjson(&lines)), false)
                .await?;
        }
    }
    let outcome = merged.outcome();
    if streamed {
        session
            .write_response_body(Some(ndjson(std::slice::from_ref(&outcome.line))), true)
            .await?;
    } else {
        let extra = [("X-WES-Nodes", nodes_header(nodes))];
        respond::json(session, outcome.status, &outcome.line, &extra).await?;
    }
    Ok(succeeded(nodes, &merged))
}

fn ndjson(lines: &[Value]) -> Bytes {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// One node's progress, line by line, into `events`; stops when the receiver is gone.
async fn node_progress(
    request: reqwest::RequestBuilder,
    i: usize,
    events: mpsc::Sender<(usize, Event)>,
) {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let _ = events.send((i, Event::Failed(502, unreachable(&e)))).await;
            return;
        }
    };
    if !response.status().is_success() {
        let (status, message) = refusal(response).await;
        let _ = events.send((i, Event::Failed(status, message))).await;
        return;
    }
    let mut splitter = LineSplitter::new(LINE_CAP);
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let message = format!("its answer broke off: {}", unreachable(&e));
                let _ = events.send((i, Event::Failed(502, message))).await;
                return;
            }
        };
        let mut lines = Vec::new();
        splitter.feed(&chunk, |piece| collect(piece, &mut lines));
        for line in lines {
            if events.send((i, Event::Line(line))).await.is_err() {
                return;
            }
        }
    }
    let mut lines = Vec::new();
    splitter.finish(|piece| collect(piece, &mut lines));
    for line in lines {
        if events.send((i, Event::Line(line))).await.is_err() {
            return;
        }
    }
    let _ = events.send((i, Event::Ended)).await;
}

/// A progress line parsed; blank and unparsable lines carry nothing to merge.
fn collect(piece: Piece<'_>, into: &mut Vec<Value>) {
    if let Piece::Line(bytes) = piece
        && let Ok(v) = serde_json::from_slice::<Value>(bytes)
        && v.is_object()
    {
        into.push(v);
    }
}

/// Copy or delete on every target: 200 with Ollama's empty body when every node did it, else
/// the error naming each node that did not. Returns the nodes that succeeded.
pub async fn plain(
    http: &reqwest::Client,
    session: &mut Session,
    nodes: &[Target],
    operation: Operation,
    path: &str,
    body: &Value,
    subject: &str,
) -> pingora::Result<Vec<String>> {
    let method = if operation == Operation::Delete {
        reqwest::Method::DELETE
    } else {
        reqwest::Method::POST
    };
    let calls = nodes.iter().map(|node| {
        let request = http
            .request(method.clone(), format!("{}{path}", node.url))
            .json(body);
        async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(refusal(r).await),
                Err(e) => Err((502, unreachable(&e))),
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let merged = settle(operation.name(), subject, nodes, results);
    answer(session, nodes, &merged, 200).await?;
    Ok(succeeded(nodes, &merged))
}

/// A call's answer per node.
pub type NodeResult = Result<(), (u16, String)>;

/// The nodes' results as one outcome.
pub fn settle(
    operation: &str,
    subject: &str,
    nodes: &[Target],
    results: Vec<NodeResult>,
) -> Progress {
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let mut merged = Progress::new(format!("{operation} {subject}"), &ids);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => merged.feed(i, &json!({"status": "success"})),
            Err((status, message)) => merged.fail(i, status, message),
        };
    }
    merged
}

/// `ok` with an empty body when every node succeeded (Ollama's copy, delete and blob upload
/// answer so), else the error naming each node that failed.
pub async fn answer(
    session: &mut Session,
    nodes: &[Target],
    merged: &Progress,
    ok: u16,
) -> pingora::Result<()> {
    let outcome = merged.outcome();
    if outcome.status != 200 {
        let extra = [("X-WES-Nodes", nodes_header(nodes))];
        return respond::json(session, outcome.status, &outcome.line, &extra).await;
    }
    let mut header = ResponseHeader::build(ok, Some(2))?;
    header.insert_header("Content-Length", "0")?;
    header.insert_header("X-WES-Nodes", nodes_header(nodes))?;
    session.write_response_header(Box::new(header), true).await
}

/// The targets whose part succeeded.
pub fn succeeded(nodes: &[Target], merged: &Progress) -> Vec<String> {
    nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| merged.part(*i) == Some(&Part::Succeeded))
        .map(|(_, n)| n.id.clone())
        .collect()
}
