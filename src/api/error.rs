//! The API's one error shape: `{"error": {"code": "…", "message": "…"}}`
//! with the HTTP status that goes with the code.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_meter_plugin::ports::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: a status, a snake_case code and a message a person can
/// act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(format!("there is no {what}")),
            StoreError::Conflict(what) => ApiError::new(StatusCode::CONFLICT, "conflict", what),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "an API request found the database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is not answering; try again shortly",
                )
            }
            // The store's refusals of values it cannot hold (a key too long,
            // a balance that would go negative) and any other error: the
            // message says which.
            StoreError::Other(why) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", why)
            }
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code (`invalid_request`, `not_found`,
    /// `unauthenticated`, `conflict`, …).
    #[schema(example = "invalid_request")]
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let text = serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"the error could not be encoded"}}"#.to_owned()
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response()
    }
}
