//! The error type of the HTTP edge. Every handler returns `ApiResult<T>`; the body is
//! always `{"errors":[{"message": "...", "path": "field"?}]}` (docs/contract.md#http-api).
//! Internal failures are logged in full and answered with a bare 500: their details
//! never reach a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            path: Some(path.into()),
        }
    }
    pub fn general(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            path: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid input")]
    BadRequest(Vec<FieldError>),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden")]
    Forbidden(Vec<FieldError>),
    #[error("not found")]
    NotFound(String),
    #[error("conflict")]
    Conflict(Vec<FieldError>),
    #[error("locked: {0}")]
    Locked(String),
    #[error("payload too large")]
    TooLarge(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest(vec![FieldError::new(path, message)])
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(vec![FieldError::general(message)])
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict(vec![FieldError::general(message)])
    }
    pub fn conflict_field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Conflict(vec![FieldError::new(path, message)])
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(vec![FieldError::general(message)])
    }
    pub fn forbidden_field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Forbidden(vec![FieldError::new(path, message)])
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Unauthorized(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Locked(_) => StatusCode::LOCKED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn errors(&self) -> Vec<FieldError> {
        match self {
            ApiError::BadRequest(e) | ApiError::Forbidden(e) | ApiError::Conflict(e) => {
                if e.is_empty() {
                    vec![FieldError::general(self.to_string())]
                } else {
                    e.clone()
                }
            }
            ApiError::Unauthorized(m)
            | ApiError::Locked(m)
            | ApiError::TooLarge(m)
            | ApiError::Unavailable(m) => vec![FieldError::general(m.clone())],
            ApiError::NotFound(what) => vec![FieldError::general(format!("{what} not found"))],
            ApiError::Internal(_) => vec![FieldError::general("Something went wrong.")],
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let mut res = (
            self.status(),
            Json(ErrorBody {
                errors: self.errors(),
            }),
        )
            .into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            // Every 503 here is transient (a peer or the database was busy).
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        res
    }
}

impl From<sqlx::Error> for ApiError {
    /// Constraint violations that reach here without a collection-specific mapping
    /// still become client errors: a unique index is the single source of truth for
    /// "already taken", so handlers never race a pre-check.
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let constraint = db.constraint().map(str::to_owned);
            match db.code().as_deref() {
                Some("23505") => {
                    return ApiError::Conflict(vec![FieldError {
                        message: "A record with this value already exists.".into(),
                        path: constraint.and_then(|c| field_from_constraint(&c)),
                    }])
                }
                Some("23503") => {
                    return ApiError::BadRequest(vec![FieldError {
                        message: "The referenced record does not exist.".into(),
                        path: constraint.and_then(|c| field_from_constraint(&c)),
                    }])
                }
                Some("23514") | Some("23502") | Some("22P02") => {
                    return ApiError::BadRequest(vec![FieldError {
                        message: "The value is not valid.".into(),
                        path: constraint.and_then(|c| field_from_constraint(&c)),
                    }])
                }
                // Input Postgres cannot store: bad input, never a 500. The engine
                // rejects these at the edge with the field's path; this is the net
                // under hand-written queries.
                Some(code @ ("22021" | "22P05" | "22001" | "22003" | "22008" | "54000")) => {
                    return ApiError::BadRequest(vec![FieldError {
                        message: match code {
                            "22021" | "22P05" => {
                                "The text contains a character that cannot be stored (such as NUL, \\u0000)."
                            }
                            "22001" | "54000" => "The value is too long.",
                            "22003" => "The number is out of range.",
                            _ => "The date or time is out of range.",
                        }
                        .into(),
                        path: constraint.and_then(|c| field_from_constraint(&c)),
                    }])
                }
                // Deadlock / serialization failure: the transaction was rolled back
                // whole, so the request can simply be sent again. 503 with
                // Retry-After says exactly that (a 409 would read as "your data
                // conflicts", which it does not).
                Some("40P01") | Some("40001") => {
                    tracing::warn!(error = %db, "transaction aborted by a concurrent one; answering 503 retry");
                    return ApiError::Unavailable(RETRY_MESSAGE.into());
                }
                _ => {}
            }
        }
        ApiError::Internal(e.into())
    }
}

/// The answer to a deadlock or serialization failure (503, `Retry-After: 1`).
pub const RETRY_MESSAGE: &str =
    "The request collided with a concurrent change and was not applied; please retry.";

/// `<table>_<column>_key` / `_fkey` / `_check` -> camelCase column name. Constraint
/// names are chosen in migrations to follow Postgres' own naming so this holds.
/// Without the table name this guesses a one-word table; the collection engine uses
/// [`field_from_table_constraint`], which knows the table.
pub fn field_from_constraint(constraint: &str) -> Option<String> {
    let stem = constraint_stem(constraint)?;
    let (_, column) = stem.split_once('_')?;
    Some(snake_to_camel(column))
}

pub fn field_from_table_constraint(table: &str, constraint: &str) -> Option<String> {
    let stem = constraint_stem(constraint)?;
    let column = stem.strip_prefix(table)?.strip_prefix('_')?;
    Some(snake_to_camel(column))
}

fn constraint_stem(constraint: &str) -> Option<&str> {
    constraint
        .strip_suffix("_fkey")
        .or_else(|| constraint.strip_suffix("_key"))
        .or_else(|| constraint.strip_suffix("_check"))
}

pub fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for ch in s.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_names_map_to_fields() {
        assert_eq!(
            field_from_constraint("partners_phone_number_key").as_deref(),
            Some("phoneNumber")
        );
        assert_eq!(
            field_from_constraint("staff_email_key").as_deref(),
            Some("email")
        );
        assert_eq!(
            field_from_table_constraint("ip_addresses", "ip_addresses_subnet_id_fkey").as_deref(),
            Some("subnetId")
        );
        assert_eq!(field_from_constraint("weird"), None);
    }
}
