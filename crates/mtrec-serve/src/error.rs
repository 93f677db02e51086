//! The one error of a request: an HTTP status and a JSON body that names the field at fault
//! (`{"error": "unknown news id \"N9\"", "field": "candidates[3]"}`).
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub status: StatusCode,
    /// The request field at fault (`history`, `candidates[3]`, `k`, ...), or `""` for the
    /// whole request.
    pub field: String,
    pub message: String,
}

impl RequestError {
    /// 400: a field of the request is wrong.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError { status: StatusCode::BAD_REQUEST, field: field.into(), message: message.into() }
    }

    /// 503: the service cannot take the request now (not ready, overloaded, stopping).
    pub fn unavailable(message: impl Into<String>) -> Self {
        RequestError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            field: String::new(),
            message: message.into(),
        }
    }

    /// 500: the service failed on a request it accepted.
    pub fn internal(message: impl Into<String>) -> Self {
        RequestError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            field: String::new(),
            message: message.into(),
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "field": self.field});
        (self.status, Json(body)).into_response()
    }
}
