//! Which kind of handling a client request gets, from its method and path alone.

use super::respond::ErrorShape;
use crate::manage::Operation;

/// An endpoint routed by the model in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Generate,
    Chat,
    Embed,
    Show,
    OpenAiChat,
    OpenAiCompletion,
    OpenAiEmbed,
    /// `/v1/responses`
    OpenAiResponses,
    /// `/v1/messages`: Ollama's Anthropic-compatible API.
    AnthropicMessages,
}

impl Endpoint {
    /// The error shape this endpoint's clients read.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletion
            | Endpoint::OpenAiEmbed
            | Endpoint::OpenAiResponses => ErrorShape::OpenAi,
            Endpoint::AnthropicMessages => ErrorShape::Anthropic,
            _ => ErrorShape::Ollama,
        }
    }

    /// The meter for this endpoint's responses; `None` for those that generate nothing.
    pub fn meter_protocol(self) -> Option<crate::meter::Protocol> {
        use crate::meter::Protocol;
        match self {
            Endpoint::Generate => Some(Protocol::OllamaGenerate),
            Endpoint::Chat => Some(Protocol::OllamaChat),
            Endpoint::OpenAiChat => Some(Protocol::OpenAiChat),
            Endpoint::OpenAiCompletion => Some(Protocol::OpenAiCompletion),
            Endpoint::OpenAiResponses => Some(Protocol::OpenAiResponses),
            Endpoint::AnthropicMessages => Some(Protocol::AnthropicMessages),
            Endpoint::Embed | Endpoint::OpenAiEmbed => Some(Protocol::Embedding),
            Endpoint::Show => None,
        }
    }

    /// Whether the response streams when the body does not say: Ollama streams by default.
    pub fn streams_by_default(self) -> bool {
        matches!(self, Endpoint::Generate | Endpoint::Chat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Sent to one node, chosen by the model named in the JSON body.
    ByModel(Endpoint),
    /// Answered by merging every healthy node's answer.
    Merged(Listing),
    /// `GET /v1/models/{id}`: the merged listing's entry.
    OneModel,
    /// Answered by the proxy itself, as Ollama answers it.
    Local(LocalAnswer),
    /// Changes the nodes' model stores (`pull`, `delete`, ...): sent to a set of nodes, for
    /// the admin token's holder.
    Management(crate::manage::Operation),
    /// A method the path does not take.
    MethodNotAllowed,
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `GET /api/tags`
    Tags,
    /// `GET /api/ps`
    Running,
    /// `GET /v1/models`
    OpenAiModels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAnswer {
    /// `GET|HEAD /`: "Ollama is running".
    Banner,
    /// `GET /api/version`
    Version,
}

pub fn classify(method: &str, path: &str) -> Route {
    let path = path.split('?').next().unwrap_or(path);
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let by_model = match path {
        "/api/generate" => Some(Endpoint::Generate),
        "/api/chat" => Some(Endpoint::Chat),
        "/api/embed" | "/api/embeddings" => Some(Endpoint::Embed),
        "/api/show" => Some(Endpoint::Show),
        "/v1/chat/completions" => Some(Endpoint::OpenAiChat),
        "/v1/completions" => Some(Endpoint::OpenAiCompletion),
        "/v1/embeddings" => Some(Endpoint::OpenAiEmbed),
        "/v1/responses" => Some(Endpoint::OpenAiResponses),
        "/v1/messages" => Some(Endpoint::AnthropicMessages),
        _ => None,
    };
    if let Some(endpoint) = by_model {
        return if method == "POST" {
            Route::ByModel(endpoint)
        } else {
            Route::MethodNotAllowed
        };
    }
    let get_only = |route| {
        if method == "GET" || method == "HEAD" {
            route
        } else {
            Route::MethodNotAllowed
        }
    };
    match path {
        "/" => get_only(Route::Local(LocalAnswer::Banner)),
        "/api/version" => get_only(Route::Local(LocalAnswer::Version)),
        "/api/tags" => get_only(Route::Merged(Listing::Tags)),
        "/api/ps" => get_only(Route::Merged(Listing::Running)),
        "/v1/models" => get_only(Route::Merged(Listing::OpenAiModels)),
        _ if path.starts_with("/v1/models/") => get_only(Route::OneModel),
        _ if Operation::is_management_path(path) => {
            Operation::of(method, path).map_or(Route::MethodNotAllowed, Route::Management)
        }
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            classify("POST", "/api/chat"),
            Route::ByModel(Endpoint::Chat)
        );
        assert_eq!(
            classify("POST", "/v1/chat/completions/"),
            Route::ByModel(Endpoint::OpenAiChat)
        );
        assert_eq!(classify("GET", "/api/chat"), Route::MethodNotAllowed);
        assert_eq!(classify("GET", "/api/tags"), Route::Merged(Listing::Tags));
        assert_eq!(classify("HEAD", "/"), Route::Local(LocalAnswer::Banner));
        assert_eq!(
            classify("GET", "/api/version?x=1"),
            Route::Local(LocalAnswer::Version)
        );
        assert_eq!(
            classify("DELETE", "/api/delete"),
            Route::Management(Operation::Delete)
        );
        assert_eq!(classify("GET", "/api/pull"), Route::MethodNotAllowed);
        assert_eq!(
            classify("POST", "/api/embed"),
            Route::ByModel(Endpoint::Embed)
        );
        assert_eq!(classify("GET", "/nope"), Route::NotFound);
        assert_eq!(classify("GET", "/v1/models/a/b:c"), Route::OneModel);
        assert_eq!(
            classify("POST", "/v1/messages"),
            Route::ByModel(Endpoint::AnthropicMessages)
        );
    }
}
