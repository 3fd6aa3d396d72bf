//! The public callback routes Daraja posts to: `/hooks/daraja/<token>/...`, a
//! neutral prefix (Safaricom refuses callback URLs containing M-Pesa, Safaricom,
//! exe, exec, cmd, sql or query) that the launcher and the reverse proxy send to
//! this service. Callbacks are unsigned, so the path token is the gate: it is
//! compared in constant time before the body is read, a wrong one is a plain 404,
//! and it is never logged.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::Mpesa;

pub fn routes(m: Arc<Mpesa>) -> Router {
    Router::new()
        .route("/hooks/daraja/{token}/stk", post(stk))
        .route("/hooks/daraja/{token}/c2b/validation", post(validation))
        .route("/hooks/daraja/{token}/c2b/confirmation", post(confirmation))
        .with_state(m)
}

fn token_ok(m: &Mpesa, token: &str) -> bool {
    token.len() == m.token.len() && bool::from(token.as_bytes().ct_eq(m.token.as_bytes()))
}

fn not_found() -> Response {
    isp_platform::ApiError::not_found("Route").into_response()
}

/// The body as JSON, or a JSON value holding the text (so a malformed callback is
/// still recorded as it came).
pub fn raw_of(body: &Bytes) -> (Value, bool) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => (v, true),
        _ => (json!({"text": String::from_utf8_lossy(body)}), false),
    }
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("callback not recorded: {e:#}");
    // Not 200: Daraja retries, and Pull Transactions / the STK query recover
    // what it does not.
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"ResultCode": 1, "ResultDesc": "Try again"})),
    )
        .into_response()
}

async fn stk(State(m): State<Arc<Mpesa>>, Path(token): Path<String>, body: Bytes) -> Response {
    if !token_ok(&m, &token) {
        return not_found();
    }
    match crate::stk::callback(&m, &body).await {
        Ok(()) => Json(json!({"ResultCode": 0, "ResultDesc": "Accepted"})).into_response(),
        Err(e) => internal(e),
    }
}

async fn validation(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    if !token_ok(&m, &token) {
        return not_found();
    }
    match crate::c2b::validation(&m, &body).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => {
            // Daraja applies the registered ResponseType when we do not answer.
            internal(e)
        }
    }
}

async fn confirmation(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    if !token_ok(&m, &token) {
        return not_found();
    }
    match crate::c2b::confirmation(&m, &body).await {
        Ok(()) => Json(crate::daraja::c2b_ack()).into_response(),
        Err(e) => internal(e),
    }
}
