//! Errors as the page sees them: a status and `{"error": message}`, the message kedit's own.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Another edit or trace holds the model: the page retries when it finishes.
    pub fn busy() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "busy: another edit or trace is running; try again when it has finished",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} KiB", limit / 1024),
        )
    }
}

/// kedit's errors: what the caller asked for wrongly is a 4xx, the rest is the server's.
impl From<kedit::Error> for ApiError {
    fn from(e: kedit::Error) -> Self {
        use kedit::Error as E;
        let status = match &e {
            E::Config(_) | E::Invalid(_) | E::Tokenizer(_) => StatusCode::BAD_REQUEST,
            E::EditRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A body that is not the JSON asked for keeps axum's status (400, 413, 415, 422) and
/// message, as JSON.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
