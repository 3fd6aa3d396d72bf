//! The public callback routes Daraja posts to: `/hooks/daraja/<token>/...`, a
//! neutral prefix (Safaricom refuses callback URLs containing M-Pesa, Safaricom,
//! exe, exec, cmd, sql or query) that the launcher and the reverse proxy send to
//! this service. Callbacks are unsigned, so the path token is the gate: it is
//! compared in constant time before the body is read (the handlers take the
//! unread body and read it only after the check), a wrong one is a plain 404,
//! and it is never logged.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::commissions::Callback;
use crate::Mpesa;

/// The largest callback body read (Daraja's are a few KB).
const MAX_BODY: usize = 256 * 1024;

pub fn routes(m: Arc<Mpesa>) -> Router {
    Router::new()
        .route("/hooks/daraja/{token}/stk", post(stk))
        .route("/hooks/daraja/{token}/c2b/validation", post(validation))
        .route("/hooks/daraja/{token}/c2b/confirmation", post(confirmation))
        .route("/hooks/daraja/{token}/b2c/result", post(b2c_result))
        .route("/hooks/daraja/{token}/b2c/timeout", post(b2c_timeout))
        .route("/hooks/daraja/{token}/b2c/status/{id}", post(b2c_status))
        .with_state(m)
}

/// The body, read only once the path token is right.
async fn gate(m: &Mpesa, token: &str, body: Body) -> Result<Bytes, Response> {
    if !isp_platform::auth::secret_eq(token.as_bytes(), m.token.as_bytes()) {
        return Err(isp_platform::ApiError::not_found("Route").into_response());
    }
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"ResultCode": 1, "ResultDesc": "Body too large"})),
        )
            .into_response()
    })
}

/// The body as JSON, or a JSON value holding the text (so a malformed callback is
/// still recorded as it came).
pub fn raw_of(body: &[u8]) -> (Value, bool) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => (v, true),
        _ => (json!({"text": String::from_utf8_lossy(body)}), false),
    }
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("callback not recorded: {e:#}");
    // Not 200: Daraja retries, and Pull Transactions / the STK query / the
    // Transaction Status query recover what it does not.
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"ResultCode": 1, "ResultDesc": "Try again"})),
    )
        .into_response()
}

fn accepted() -> Response {
    Json(json!({"ResultCode": 0, "ResultDesc": "Accepted"})).into_response()
}

async fn stk(State(m): State<Arc<Mpesa>>, Path(token): Path<String>, body: Body) -> Response {
    let body = match gate(&m, &token, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::stk::callback(&m, &body).await {
        Ok(()) => accepted(),
        Err(e) => internal(e),
    }
}

async fn validation(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    let body = match gate(&m, &token, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::c2b::validation(&m, &body).await {
        Ok(answer) => Json(answer).into_response(),
        // Daraja applies the registered ResponseType when we do not answer.
        Err(e) => internal(e),
    }
}

async fn confirmation(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    let body = match gate(&m, &token, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::c2b::confirmation(&m, &body).await {
        Ok(()) => Json(crate::daraja::c2b_ack()).into_response(),
        Err(e) => internal(e),
    }
}

async fn b2c(m: &Mpesa, token: &str, which: Callback, body: Body) -> Response {
    let body = match gate(m, token, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::commissions::callback(m, which, &body).await {
        Ok(()) => accepted(),
        Err(e) => internal(e),
    }
}

async fn b2c_result(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    b2c(&m, &token, Callback::Result, body).await
}

async fn b2c_timeout(
    State(m): State<Arc<Mpesa>>,
    Path(token): Path<String>,
    body: Body,
) -> Response {
    b2c(&m, &token, Callback::Timeout, body).await
}

async fn b2c_status(
    State(m): State<Arc<Mpesa>>,
    Path((token, id)): Path<(String, String)>,
    body: Body,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        // Checked after the token: a wrong token is a 404 whatever the id.
        if !isp_platform::auth::secret_eq(token.as_bytes(), m.token.as_bytes()) {
            return isp_platform::ApiError::not_found("Route").into_response();
        }
        return isp_platform::ApiError::not_found("Commission").into_response();
    };
    b2c(&m, &token, Callback::Status(id), body).await
}
