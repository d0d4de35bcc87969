//! `HEAD` and `POST /api/blobs/:digest`: what `ollama create` sends before the create itself.
//! An upload's body (a model file: gigabytes) is streamed to every target node at once, chunk
//! by chunk, never held whole: each node has a short queue, and the client is read only as fast
//! as the slowest node takes it, so the proxy's memory stays a few chunks per node.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::fanout::{Target, answer, refusal, settle, succeeded, unreachable};

/// Chunks queued per node: with Pingora's reads of up to 64 KiB, a few hundred KiB per node.
const QUEUE: usize = 4;

/// 200 only when every target has the blob (Ollama's answer has no body).
pub async fn exists(
    http: &reqwest::Client,
    session: &mut Session,
    nodes: &[Target],
    path: &str,
) -> pingora::Result<Vec<String>> {
    let checks = nodes.iter().map(|n| {
        let request = http.head(format!("{}{path}", n.url));
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    });
    let found = futures::future::join_all(checks).await;
    let status = if found.iter().all(|f| *f) { 200 } else { 404 };
    let mut header = ResponseHeader::build(status, Some(1))?;
    header.insert_header("Content-Length", "0")?;
    session
        .write_response_header(Box::new(header), true)
        .await?;
    Ok(nodes
        .iter()
        .zip(found)
        .filter(|(_, f)| *f)
        .map(|(n, _)| n.id.clone())
        .collect())
}

/// Streams the request body to every target; 201 when each stored it, else the error naming
/// each node that did not.
pub async fn upload(
    http: &reqwest::Client,
    session: &mut Session,
    nodes: &[Target],
    path: &str,
) -> pingora::Result<Vec<String>> {
    let length = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut feeds = Vec::with_capacity(nodes.len());
    let mut calls = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
        let mut request = http
            .post(format!("{}{path}", node.url))
            .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)));
        if let Some(length) = &length {
            request = request.header(http::header::CONTENT_LENGTH, length.as_str());
        }
        feeds.push(Some(tx));
        calls.push(tokio::spawn(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(refusal(r).await),
                Err(e) => Err((502, unreachable(&e))),
            }
        }));
    }
    let mut sent = 0u64;
    let mut client_error = None;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                client_error = Some(e);
                break;
            }
        };
        sent += chunk.len() as u64;
        let mut open = 0;
        for feed in &mut feeds {
            // A node that ended its request (it refused, or broke) is left out from here on;
            // its call's result says why.
            if let Some(tx) = feed
                && tx.send(Ok(chunk.clone())).await.is_err()
            {
                *feed = None;
            }
            open += usize::from(feed.is_some());
        }
        if open == 0 {
            break;
        }
    }
    if client_error.is_some() {
        // The nodes must not store a partial blob as if it were whole: end their bodies with
        // an error rather than cleanly.
        for tx in feeds.iter().flatten() {
            let broke = std::io::Error::other("the client's upload broke off");
            let _ = tx.send(Err(broke)).await;
        }
    }
    drop(feeds);
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        results.push(
            call.await
                .unwrap_or_else(|e| Err((500, format!("upload task failed: {e}")))),
        );
    }
    if let Some(e) = client_error {
        tracing::warn!(
            path,
            sent,
            "blob upload broke off on the client's side: {e}"
        );
        return Err(e);
    }
    let digest = path.trim_start_matches("/api/blobs/");
    let merged = settle("upload of blob", digest, nodes, results);
    answer(session, nodes, &merged, 201).await?;
    Ok(succeeded(nodes, &merged))
}
