//! The router's one error type and the one place where an error becomes an HTTP response.
//!
//! Every failure the router itself produces reaches the client as an OpenAI-shaped body
//! `{"error": {"message", "type", "code"}}` with the matching status: sglang-router's shape, which
//! `strata serve` workers answer with too, so a client sees one shape with or without a router.
//! A worker's JSON error is passed through byte for byte by the proxy; plain-text error replies
//! (axum's rejections here, e.g. a body over `--max-payload-size`, or a foreign worker's text) are
//! rewritten into the same shape by [`json_rejections`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors the router reports to its clients or to the command that starts it.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no healthy worker available")]
    NoWorkers,
    #[error("no healthy {0} worker available")]
    NoPoolWorkers(&'static str),
    #[error("request queue is full")]
    QueueFull,
    #[error("timed out waiting in the request queue")]
    QueueTimeout,
    #[error("invalid or missing api key")]
    Unauthorized,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("worker already registered: {0}")]
    WorkerExists(String),
    #[error("worker request failed after {attempts} attempt(s): {last}")]
    Upstream { attempts: u32, last: String },
    #[error("worker request timed out")]
    UpstreamTimeout,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("workers not healthy after {secs} s: {urls}")]
    StartupTimeout { secs: u64, urls: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl RouterError {
    /// The HTTP status this error is reported with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoWorkers | Self::NoPoolWorkers(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::QueueTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) | Self::Config(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::WorkerExists(_) => StatusCode::CONFLICT,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StartupTimeout { .. } | Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }
}

/// Builds the OpenAI-shaped error body for `status` and `message`.
pub fn error_body(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": status.as_u16() }
    });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        // Internals (socket errors, worker URLs in startup errors) are logged, not sent.
        let message = match &self {
            Self::Io(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        tracing::debug!(error = %self, "request failed");
        error_body(self.status(), self.kind(), &message)
    }
}

/// Rewrites an error response that is not JSON into the router's error shape; `limit` is the
/// body limit, named in 413s.
pub async fn json_rejections(resp: Response, limit: usize) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "request body is larger than the router's limit of {limit} bytes (--max-payload-size)"
        )
    } else {
        let body = axum::body::to_bytes(resp.into_body(), 64 << 10)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        }
    };
    let kind = match status.as_u16() {
        400 | 405 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        503 => "service_unavailable",
        _ => "server_error",
    };
    let mut resp = error_body(status, kind, &message);
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The body was not read, so the connection cannot carry another request: say so, or a
        // client that pools connections sends its next request into a closing socket.
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

pub type Result<T, E = RouterError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_openai_shaped() {
        let resp = RouterError::QueueFull.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "request queue is full");
    }
}
