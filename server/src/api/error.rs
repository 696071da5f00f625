//! The one error type of the HTTP layer, rendered in one place as the JSON body sglang-router
//! (and so `strata router`) answers with: `{"error": {"message", "type", "code": <status>}}`.
//! One shape whether a client talks to a worker or to a router in front of it. Messages describe
//! the request's problem and never include internal details. Rejections made below the handlers
//! (an oversized body, a wrong content type) are rewritten into the same shape by
//! [`json_rejections`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An HTTP error response.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Unauthorized: missing or wrong API key.".into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    /// A route or feature of SGLang that Strata does not have: 501.
    pub fn not_supported(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_IMPLEMENTED,
            message: message.into(),
        }
    }
    /// OpenAI's error type names, the ones the router uses.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            501 => "not_supported_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "code": self.status.as_u16(),
            }
        });
        (self.status, Json(body)).into_response()
    }
}

/// Parses a JSON body into `T`, turning syntax and type errors into 400s.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// Rewrites an error response that is not JSON (axum's plain-text rejections: body over the
/// limit, missing content type) into an [`ApiError`]; `limit` is the body limit, named in 413s.
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
            "The request body is larger than the server's limit of {limit} bytes \
             (--max-payload-size)."
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
    let mut resp = ApiError { status, message }.into_response();
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
