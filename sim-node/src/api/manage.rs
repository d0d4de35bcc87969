//! Ollama's model-management calls: pull, push, create, copy, delete and blobs, with their
//! progress lines, status codes and error strings. Transfers take time at the node's
//! `pull_bytes_per_sec`; `/wes-sim/management` sets that and the failures tests need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::ollama::{ApiError, ApiResult, ModelRequest, line, ndjson};
use super::parse_json;
use crate::catalog::ModelInfo;
use crate::node::Node;
use crate::store::{Layer, ManagementSettings, layers, transfer_steps};

/// How often a transfer reports progress.
const STEP: Duration = Duration::from_millis(100);

/// The lines of one call, sent as they happen; the receiver gone (the client hung up) stops
/// the work, as Ollama cancels a pull whose client left.
type Lines = mpsc::Sender<Value>;

/// Streams what `work` sends, or, for `"stream": false`, answers with its last line: 200 for
/// success, 500 with the error as Ollama's non-streamed pull does.
async fn answer<F, Fut>(stream: bool, work: F) -> Response
where
    F: FnOnce(Lines) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Value>(16);
    tokio::spawn(work(tx));
    if stream {
        let lines = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|v| (line(&v), rx))
        });
        return ndjson(lines);
    }
    let mut last = json!({"error": "the call ended without an answer"});
    while let Some(v) = rx.recv().await {
        last = v;
    }
    let status = if last.get("error").is_some() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (status, Json(last)).into_response()
}

/// Sends one layer's progress at `rate`; `false` once the client is gone or the layer failed
/// (`fail_at`: the completed count at which it fails, with that error line sent).
async fn transfer(
    lines: &Lines,
    verb: &str,
    layer: &Layer,
    rate: u64,
    fail_at: Option<(u64, &str)>,
) -> bool {
    let steps = transfer_steps(layer.size, rate, STEP.as_secs_f64());
    let last = steps.len().saturating_sub(1);
    for (i, completed) in steps.into_iter().enumerate() {
        if let Some((at, error)) = fail_at
            && completed >= at
        {
            let _ = lines.send(json!({ "error": error })).await;
            return false;
        }
        let progress = json!({
            "status": format!("{verb} {}", layer.short()),
            "digest": layer.digest,
            "total": layer.size,
            "completed": completed,
        });
        if lines.send(progress).await.is_err() {
            return false;
        }
        if i < last {
            tokio::time::sleep(STEP).await;
        }
    }
    true
}

/// `ollama pull`: any name can be pulled (figures are derived for unknown names); it takes
/// the model's size at the node's pull rate, and fails where the settings say.
pub async fn pull(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: ModelRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let name = req.name()?;
    let settings = node.store.settings();
    Ok(answer(req.stream.unwrap_or(true), move |lines| async move {
        if lines
            .send(json!({"status": "pulling manifest"}))
            .await
            .is_err()
        {
            return;
        }
        let model = ModelInfo::new(&name, SystemTime::now());
        let fail = settings.fail_pulls.as_deref();
        if let (Some(error), 0) = (fail, settings.fail_after_bytes) {
            let _ = lines.send(json!({ "error": error })).await;
            return;
        }
        for (i, layer) in layers(&model).iter().enumerate() {
            let fail_at = fail
                .filter(|_| i == 0)
                .map(|e| (settings.fail_after_bytes, e));
            if !transfer(
                &lines,
                "pulling",
                layer,
                settings.pull_bytes_per_sec,
                fail_at,
            )
            .await
            {
                return;
            }
        }
        for status in ["verifying sha256 digest", "writing manifest"] {
            if lines.send(json!({ "status": status })).await.is_err() {
                return;
            }
        }
        node.add_model(&name);
        let _ = lines.send(json!({"status": "success"})).await;
    })
    .await)
}

/// `ollama push`: the model's layers uploaded at the pull rate; the registry is imaginary.
pub async fn push(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: ModelRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let name = req.name()?;
    let model = node
        .find_model(&name)
        .ok_or_else(|| ApiError::no_such_model(&name))?;
    let rate = node.store.settings().pull_bytes_per_sec;
    Ok(answer(req.stream.unwrap_or(true), move |lines| async move {
        if lines
            .send(json!({"status": "retrieving manifest"}))
            .await
            .is_err()
        {
            return;
        }
        for layer in layers(&model) {
            if !transfer(&lines, "pushing", &layer, rate, None).await {
                return;
            }
        }
        if lines
            .send(json!({"status": "pushing manifest"}))
            .await
            .is_ok()
        {
            let _ = lines.send(json!({"status": "success"})).await;
        }
    })
    .await)
}

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    files: Option<BTreeMap<String, String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

/// `ollama create`: from uploaded blobs (`files`) or from a model the node holds (`from`).
pub async fn create(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: CreateRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let name = req
        .model
        .clone()
        .or(req.name.clone())
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("model is required"))?;
    let mut steps: Vec<String> = Vec::new();
    let mut model = ModelInfo::new(&name, SystemTime::now());
    match (&req.files, &req.from) {
        (Some(files), _) if !files.is_empty() => {
            steps.push("parsing GGUF".to_owned());
            let mut size = 0;
            for (file, digest) in files {
                let blob = node.store.blob_size(digest).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "file {file}: blob {digest} not found; upload it first (POST /api/blobs/{digest})"
                    ))
                })?;
                size += blob;
                steps.push(format!("using existing layer {digest}"));
            }
            model.size_bytes = size;
            if let Some((_, first)) = files.iter().next() {
                model.digest = first.trim_start_matches("sha256:").to_owned();
            }
        }
        (_, Some(from)) => {
            let source = node
                .find_model(from)
                .ok_or_else(|| ApiError::no_such_model(from))?;
            steps.push(format!("using existing layer sha256:{}", source.digest));
            model = ModelInfo {
                name: name.clone(),
                modified_at: SystemTime::now(),
                ..(*source).clone()
            };
        }
        _ => {
            return Err(ApiError::bad_request(
                "neither 'from' or 'files' was specified",
            ));
        }
    }
    for (what, given) in [("template", &req.template), ("system", &req.system)] {
        if given.is_some() {
            steps.push(format!("creating {what} layer"));
        }
    }
    steps.push("writing manifest".to_owned());
    Ok(answer(req.stream.unwrap_or(true), move |lines| async move {
        for status in steps {
            if lines.send(json!({ "status": status })).await.is_err() {
                return;
            }
        }
        node.put_model(model);
        let _ = lines.send(json!({"status": "success"})).await;
    })
    .await)
}

pub async fn delete(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: ModelRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    let name = req.name()?;
    if node.remove_model(&name) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::no_such_model(&name))
    }
}

#[derive(Deserialize)]
struct CopyRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

pub async fn copy(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: CopyRequest = parse_json(&body).map_err(ApiError::bad_request)?;
    if req.source.trim().is_empty() || req.destination.trim().is_empty() {
        return Err(ApiError::bad_request("source and destination are required"));
    }
    let source = node
        .find_model(&req.source)
        .ok_or_else(|| ApiError::no_such_model(&req.source))?;
    node.copy_model(&source, &req.destination);
    Ok(StatusCode::OK.into_response())
}

/// `HEAD /api/blobs/:digest`: 200 when the node has it, else 404, no body.
pub async fn blob_exists(State(node): State<Arc<Node>>, Path(digest): Path<String>) -> StatusCode {
    if node.store.has_blob(&digest) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `POST /api/blobs/:digest`: the body hashed as it arrives (never held), at the node's blob
/// rate; stored when its SHA-256 is the digest named, 201. A blob the node has is not read
/// again (200), as Ollama answers.
pub async fn blob_upload(
    State(node): State<Arc<Node>>,
    Path(digest): Path<String>,
    body: Body,
) -> ApiResult {
    if node.store.has_blob(&digest) {
        return Ok(StatusCode::OK.into_response());
    }
    let rate = node.store.settings().blob_bytes_per_sec;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the blob: {e}")))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
        }
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        return Err(ApiError::bad_request(format!(
            "digest mismatch, expected \"{digest}\", got \"{got}\""
        )));
    }
    node.store.add_blob(&digest, size);
    Ok(StatusCode::CREATED.into_response())
}

/// `GET /wes-sim/management`: the settings; `POST` replaces them.
pub async fn settings(State(node): State<Arc<Node>>) -> Json<ManagementSettings> {
    Json(node.store.settings())
}

pub async fn set_settings(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let settings: ManagementSettings = parse_json(&body).map_err(ApiError::bad_request)?;
    *node.store.settings.lock() = settings.clone();
    Ok(Json(json!(settings)).into_response())
}
