//! `/api/tags`, `/api/ps` and `/v1/models`: asked of every healthy node, merged, deduplicated.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use super::route::Listing;
use crate::config::{HealthConfig, KeyConfig, RoutingConfig};
use crate::fleet::FleetView;
use crate::ranking::eligibility::unavailable_reason;

impl Listing {
    fn path(self) -> &'static str {
        match self {
            Listing::Tags => "/api/tags",
            Listing::Running => "/api/ps",
            Listing::OpenAiModels => "/v1/models",
        }
    }
}

/// Asks each node that may take traffic (the ranking's one eligibility rule) concurrently; a
/// node that fails or is slow is left out of the answer, not allowed to fail it.
pub async fn fetch_and_merge(
    http: &reqwest::Client,
    fleet: &FleetView,
    routing: &RoutingConfig,
    health: &HealthConfig,
    listing: Listing,
    key: Option<&KeyConfig>,
) -> Value {
    let now = Instant::now();
    let urls: Vec<String> = fleet
        .nodes
        .iter()
        .filter(|n| {
            let telemetry = n.state.telemetry();
            unavailable_reason(telemetry.as_deref(), &n.state, routing, health, now).is_none()
        })
        .map(|n| format!("{}{}", n.config.url, listing.path()))
        .collect();
    let answers = join_all(urls.iter().map(|url| async move {
        let response = http
            .get(url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            tracing::warn!(%url, status = %response.status(), "listing failed on a node");
            return None;
        }
        response.json::<Value>().await.ok()
    }))
    .await;
    let allowed = |model: &str| key.is_none_or(|k| k.allows(model));
    merge(listing, answers.into_iter().flatten(), allowed)
}

/// Merges node answers in order; the first node to list a name wins. Only models `allowed`
/// are listed: a key sees the models it may use.
pub fn merge(
    listing: Listing,
    answers: impl IntoIterator<Item = Value>,
    allowed: impl Fn(&str) -> bool,
) -> Value {
    let (list_key, id_key) = match listing {
        Listing::Tags | Listing::Running => ("models", "name"),
        Listing::OpenAiModels => ("data", "id"),
    };
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    for answer in answers {
        let Some(list) = answer.get(list_key).and_then(Value::as_array) else {
            continue;
        };
        for item in list {
            let Some(id) = item.get(id_key).and_then(Value::as_str) else {
                continue;
            };
            if allowed(id) && seen.insert(id.to_owned()) {
                items.push(item.clone());
            }
        }
    }
    match listing {
        Listing::Tags | Listing::Running => json!({ "models": items }),
        Listing::OpenAiModels => json!({ "object": "list", "data": items }),
    }
}

/// `GET /v1/models/{id}`: the merged listing's entry for `id` (Ollama's name rules: a missing
/// tag is `latest`), or `None`.
pub fn one_model(merged: &Value, id: &str) -> Option<Value> {
    merged["data"]
        .as_array()?
        .iter()
        .find(|m| {
            m.get("id")
                .and_then(Value::as_str)
                .is_some_and(|m| crate::fleet::model_name::same(m, id))
        })
        .cloned()
}

/// The model id in a `/v1/models/{id}` path, percent-decoded (ids hold `/` and `:`).
pub fn model_id_in(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let raw = path.strip_prefix("/v1/models/")?.trim_end_matches('/');
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    (!id.is_empty()).then(|| id.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_model_by_id() {
        let merged =
            json!({"object": "list", "data": [{"id": "team/m:prod"}, {"id": "m2:latest"}]});
        assert_eq!(
            model_id_in("/v1/models/team%2Fm%3Aprod").as_deref(),
            Some("team/m:prod")
        );
        assert_eq!(
            model_id_in("/v1/models/team/m:prod/").as_deref(),
            Some("team/m:prod")
        );
        assert_eq!(model_id_in("/v1/models/"), None);
        assert_eq!(
            one_model(&merged, "team/m:prod").unwrap()["id"],
            "team/m:prod"
        );
        assert_eq!(one_model(&merged, "m2").unwrap()["id"], "m2:latest");
        assert!(one_model(&merged, "m3").is_none());
    }

    #[test]
    fn dedupes_by_name_first_wins() {
        let a = json!({"models": [{"name": "m1", "size": 1}, {"name": "m2", "size": 2}]});
        let b = json!({"models": [{"name": "m2", "size": 99}, {"name": "m3", "size": 3}]});
        let merged = merge(Listing::Tags, [a, b, json!({"garbage": true})], |_| true);
        let names: Vec<_> = merged["models"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("m1"), json!("m2"), json!("m3")]);
        assert_eq!(merged["models"][1]["size"], 2);
    }

    #[test]
    fn openai_shape() {
        let a = json!({"object": "list", "data": [{"id": "m1", "object": "model"}]});
        let merged = merge(Listing::OpenAiModels, [a.clone(), a], |_| true);
        assert_eq!(
            merged,
            json!({"object": "list", "data": [{"id": "m1", "object": "model"}]})
        );
        assert_eq!(merge(Listing::Running, [], |_| true), json!({"models": []}));
    }

    #[test]
    fn a_key_sees_only_the_models_it_may_use() {
        let a = json!({"models": [{"name": "m1"}, {"name": "m2"}]});
        let merged = merge(Listing::Tags, [a], |m| m == "m2");
        assert_eq!(merged, json!({"models": [{"name": "m2"}]}));
    }
}
