//! The server's errors, each with its HTTP status and OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Everything a request can fail with.
///
/// ```
/// use colloquy_server::ApiError;
/// let e = ApiError::invalid("temperature", "temperature must be between 0 and 2");
/// assert_eq!(e.status().as_u16(), 400);
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field has a value colloquy cannot honour (400).
    #[error("{message}")]
    InvalidRequest {
        /// The field, when one is to blame.
        param: Option<String>,
        /// What is wrong and what to send instead.
        message: String,
    },
    /// The body is not JSON of the expected shape (400).
    #[error("the request body is not valid: {0}")]
    BadJson(String),
    /// The conversation does not fit in the context (400,
    /// `context_length_exceeded`, with llama.cpp's extra fields).
    #[error("the conversation needs {needed} tokens, the context holds {n_ctx}; shorten it, or restart the server with a larger --ctx-size or with --context-policy drop-oldest")]
    ContextLength {
        /// Tokens the prompt needs.
        needed: usize,
        /// The context length.
        n_ctx: usize,
    },
    /// A missing or wrong API key (401).
    #[error("invalid API key: send the key the server was started with (--api-key or COLLOQUY_API_KEY) as 'Authorization: Bearer KEY'")]
    Unauthorized,
    /// No such model (404).
    #[error("the model '{0}' does not exist; GET /v1/models lists the one this server runs")]
    ModelNotFound(String),
    /// No such session (404).
    #[error("no session '{0}'; POST /v1/sessions creates one, GET /v1/sessions lists them")]
    SessionNotFound(String),
    /// No such route (404).
    #[error("no route {0}")]
    RouteNotFound(String),
    /// A turn is running on the session and the client asked not to wait (409).
    #[error("a turn is running on session '{0}'; retry when it has finished, or send the request without \"session_wait\": false to wait for it")]
    SessionBusy(String),
    /// Another server saved the session since this one read it (409).
    #[error("session '{0}' was changed by another writer while this turn ran; the answer was not saved, send the turn again")]
    SessionConflict(String),
    /// The body is larger than the server accepts (413).
    #[error("the request body is larger than {0} bytes; send a shorter conversation, or restart the server with a larger --max-body-bytes")]
    PayloadTooLarge(usize),
    /// The queue is full (429, with `Retry-After`).
    #[error("the server is busy: {0} requests are queued or running; retry after a second, or start it with a larger --max-queue")]
    QueueFull(usize),
    /// The server is stopping (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The session store does not answer (503, with `Retry-After`): nothing
    /// was acknowledged.
    #[error("{0}; nothing was saved, retry the request when the store is back")]
    StoreUnavailable(String),
    /// Anything else (500): the library's error, with its cause.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 for `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { param: Some(param.to_string()), message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::BadJson(_) | ApiError::ContextLength { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_) | ApiError::SessionNotFound(_) | ApiError::RouteNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::SessionBusy(_) | ApiError::SessionConflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown | ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code`.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::BadJson(_) => ("invalid_request_error", None),
            ApiError::ContextLength { .. } => ("invalid_request_error", Some("context_length_exceeded")),
            ApiError::Unauthorized => ("authentication_error", Some("invalid_api_key")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::SessionNotFound(_) => ("invalid_request_error", Some("session_not_found")),
            ApiError::RouteNotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::SessionBusy(_) => ("invalid_request_error", Some("session_busy")),
            ApiError::SessionConflict(_) => ("invalid_request_error", Some("session_conflict")),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            ApiError::QueueFull(_) => ("rate_limit_error", Some("queue_full")),
            ApiError::ShuttingDown => ("server_error", Some("shutting_down")),
            ApiError::StoreUnavailable(_) => ("server_error", Some("store_unavailable")),
            ApiError::Internal(_) => ("server_error", None),
        }
    }

    /// The JSON body: OpenAI's shape (plus `n_prompt_tokens` and `n_ctx` for
    /// an over-long prompt, as llama-server sends them).
    pub fn body(&self) -> Value {
        let (kind, code) = self.kind();
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::ContextLength { .. } => Some("messages".to_string()),
            _ => None,
        };
        let mut body =
            json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}});
        if let ApiError::ContextLength { needed, n_ctx } = self {
            body["error"]["n_prompt_tokens"] = json!(needed);
            body["error"]["n_ctx"] = json!(n_ctx);
        }
        body
    }
}

impl From<colloquy::Error> for ApiError {
    fn from(e: colloquy::Error) -> ApiError {
        match e {
            colloquy::Error::ContextOverflow { needed, n_ctx } => ApiError::ContextLength { needed, n_ctx },
            colloquy::Error::StoreSessionNotFound { session } => ApiError::SessionNotFound(session),
            colloquy::Error::SessionConflict { id, .. } => ApiError::SessionConflict(id),
            colloquy::Error::EmptyPrompt => ApiError::invalid("prompt", e.to_string()),
            colloquy::Error::ForkOutOfRange { .. } => ApiError::invalid("at", e.to_string()),
            colloquy::Error::StoreInvalidId { .. } => ApiError::invalid("session_id", e.to_string()),
            colloquy::Error::StoreUnavailable { .. } | colloquy::Error::StoreBusy(_) => {
                ApiError::StoreUnavailable(e.to_string())
            }
            // A constraint that fails mid-answer (the chat route maps one
            // that fails to compile to its own field).
            colloquy::Error::ConstraintInvalid(_) | colloquy::Error::ConstraintUnsatisfiable(_) => {
                ApiError::invalid("response_format", e.to_string())
            }
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, ApiError::QueueFull(_) | ApiError::StoreUnavailable(_)) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_has_openai_code_and_llama_cpp_fields() {
        let b = ApiError::ContextLength { needed: 9000, n_ctx: 8192 }.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "context_length_exceeded");
        assert_eq!(b["error"]["n_prompt_tokens"], 9000);
        assert_eq!(b["error"]["n_ctx"], 8192);
        assert!(b["error"]["message"].as_str().unwrap().contains("--ctx-size"));
    }

    #[test]
    fn every_error_has_the_four_fields() {
        for e in [ApiError::Unauthorized, ApiError::QueueFull(3), ApiError::invalid("n", "only n = 1")] {
            let b = e.body();
            for k in ["message", "type", "param", "code"] {
                assert!(b["error"].get(k).is_some(), "{k} missing in {b}");
            }
        }
        assert_eq!(ApiError::invalid("n", "x").body()["error"]["param"], "n");
        assert_eq!(ApiError::QueueFull(1).status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
