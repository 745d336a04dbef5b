//! The API's one error-code table: every error is `{ "code", "message" }` (and `field` when a
//! value was refused), its HTTP status decided here and nowhere else. 5xx bodies hide internals;
//! the cause is logged once.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;

/// Error codes, their status and what they mean (also published in the OpenAPI document).
pub const CODES: &[(&str, u16, &str)] = &[
    (
        "bad_request",
        400,
        "The request is malformed (JSON, query string).",
    ),
    ("invalid", 422, "A value was refused; `field` names it."),
    ("unauthenticated", 401, "No valid session or token."),
    ("bad_credentials", 401, "E-mail or password is wrong."),
    (
        "totp_required",
        401,
        "This account needs its one-time code (`totp`).",
    ),
    (
        "bad_totp",
        401,
        "The one-time code is wrong or was already used.",
    ),
    (
        "mfa_enrollment_required",
        403,
        "Platform staff must enable a second factor first (POST /api/v1/auth/totp/setup).",
    ),
    (
        "forbidden",
        403,
        "Your role or token scope does not allow this.",
    ),
    (
        "not_found",
        404,
        "No such object (or not in your organisations).",
    ),
    ("no_route", 404, "No such endpoint."),
    ("conflict", 409, "The object already exists or is in use."),
    (
        "too_many_attempts",
        429,
        "Too many failed sign-ins; wait `retry_after` seconds.",
    ),
    ("payload_too_large", 413, "The request body is too large."),
    (
        "internal",
        500,
        "Something failed on our side; it was logged.",
    ),
];

#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(CODES.iter().any(|c| c.0 == code), "unknown code {code}");
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..Self::new("invalid", message)
        }
    }

    pub fn not_found() -> Self {
        Self::new("not_found", "no such object")
    }

    pub fn forbidden(what: &str) -> Self {
        Self::new(
            "forbidden",
            format!("your role or token scope does not allow {what}"),
        )
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            "unauthenticated",
            "sign in (POST /api/v1/auth/login) or send an API token as `Authorization: Bearer …`",
        )
    }

    pub fn status(&self) -> StatusCode {
        let s = CODES.iter().find(|c| c.0 == self.code).map_or(500, |c| c.1);
        StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            Json(Body {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                retry_after: self.retry_after,
            }),
        )
            .into_response();
        if let Some(r) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&r.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::new("internal", "internal error")
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
