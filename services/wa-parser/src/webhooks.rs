//! The two inbound channels. Both authenticate before reading the body, store
//! each message once (keyed on the provider's message id) and answer at once; the
//! [`crate::worker`] processes what was stored.
//!
//! - WhatsApp Cloud API: `GET /api/wa-parser/whatsapp/webhook` (the verification
//!   handshake) and `POST` (notifications, `X-Hub-Signature-256` = HMAC-SHA256 of
//!   the raw body with the app secret, checked in constant time by `ring`).
//! - Africa's Talking inbound SMS: `POST /api/wa-parser/sms/{token}`, form-encoded
//!   `from, to, text, date, id, linkId`; AT does not sign callbacks, so the
//!   unguessable path token (compared in constant time) and an optional source
//!   allowlist stand in.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use isp_platform::phone;
use isp_platform::{ApiError, FieldError};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use uuid::Uuid;

use crate::inbound::Channel;
use crate::AppState;

pub const WHATSAPP_PATH: &str = "/api/wa-parser/whatsapp/webhook";
pub const SMS_PATH: &str = "/api/wa-parser/sms/{token}";
/// Webhook bodies are small; anything bigger is not from the providers.
const MAX_BODY: usize = 1024 * 1024;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(WHATSAPP_PATH, get(handshake).post(whatsapp))
        .route(SMS_PATH, post(sms))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(paths(handshake, whatsapp, sms))]
struct WebhookDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    WebhookDoc::openapi()
}

fn secret_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A message as stored, before processing.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub channel: Channel,
    pub provider_message_id: String,
    pub sender: Option<String>,
    pub sender_bsuid: Option<String>,
    pub reply_to: Option<String>,
    pub message_type: String,
    pub raw_text: Option<String>,
}

/// Stores messages (each provider id once) in one transaction; returns how many
/// were new. Postgres cannot store NUL in text, so it is dropped from what a
/// provider sent rather than refusing the whole delivery.
pub async fn store(pool: &sqlx::PgPool, msgs: &[Inbound]) -> Result<u64, ApiError> {
    let clean = |s: &Option<String>| s.as_ref().map(|v| v.replace('\0', ""));
    let mut tx = pool.begin().await?;
    let mut new = 0;
    for m in msgs {
        new += sqlx::query(
            "INSERT INTO inbound_messages (id, channel, provider_message_id, sender, sender_bsuid,
                 reply_to, message_type, raw_text)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (channel, provider_message_id) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(m.channel)
        .bind(m.provider_message_id.replace('\0', ""))
        .bind(clean(&m.sender))
        .bind(clean(&m.sender_bsuid))
        .bind(clean(&m.reply_to))
        .bind(m.message_type.replace('\0', ""))
        .bind(clean(&m.raw_text))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(new)
}

fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The webhook verification handshake: answers `hub.challenge` as plain text
/// when `hub.mode` is `subscribe` and `hub.verify_token` is ours.
#[utoipa::path(get, path = "/api/wa-parser/whatsapp/webhook", tag = "webhooks",
    params(
        ("hub.mode" = String, Query, description = "`subscribe`"),
        ("hub.verify_token" = String, Query, description = "Must equal ISP_WA_PARSER_VERIFY_TOKEN"),
        ("hub.challenge" = String, Query, description = "Echoed back")),
    responses(
        (status = 200, description = "The challenge, text/plain", content_type = "text/plain", body = String),
        (status = 403, description = "Wrong mode or token")))]
async fn handshake(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let raw = raw.as_deref();
    let mode = query_param(raw, "hub.mode");
    let token = query_param(raw, "hub.verify_token").unwrap_or_default();
    let challenge = query_param(raw, "hub.challenge").unwrap_or_default();
    if mode.as_deref() == Some("subscribe") && secret_eq(&token, &s.settings.verify_token) {
        ([(header::CONTENT_TYPE, "text/plain")], challenge).into_response()
    } else {
        tracing::warn!("WhatsApp webhook handshake refused (wrong mode or verify token)");
        ApiError::forbidden("The verify token does not match.").into_response()
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` over the raw body. `ring`'s
/// `hmac::verify` compares in constant time.
pub fn signature_ok(app_secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(tag) = hex::decode(sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app_secret.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

/// Messages in a Cloud API notification. Statuses carry no message and are left
/// out; a change of another `field` too.
pub fn whatsapp_messages(v: &Value) -> Vec<Inbound> {
    let mut out = vec![];
    for entry in v["entry"].as_array().into_iter().flatten() {
        for change in entry["changes"].as_array().into_iter().flatten() {
            if change["field"] != "messages" {
                continue;
            }
            let value = &change["value"];
            let contacts: Vec<&Value> =
                value["contacts"].as_array().into_iter().flatten().collect();
            for m in value["messages"].as_array().into_iter().flatten() {
                let Some(id) = m["id"].as_str().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let from = m["from"].as_str().filter(|s| !s.is_empty());
                // The contact of this sender: by number, else by BSUID, else the
                // only one.
                let contact = contacts
                    .iter()
                    .find(|c| from.is_some() && c["wa_id"].as_str() == from)
                    .or_else(|| {
                        contacts.iter().find(|c| {
                            m["from_user_id"].as_str().is_some()
                                && c["user_id"].as_str() == m["from_user_id"].as_str()
                        })
                    })
                    .or(if contacts.len() == 1 {
                        contacts.first()
                    } else {
                        None
                    });
                let wa_id = from.or_else(|| contact.and_then(|c| c["wa_id"].as_str()));
                let bsuid = contact
                    .and_then(|c| c["user_id"].as_str())
                    .or_else(|| m["from_user_id"].as_str())
                    .filter(|s| !s.is_empty());
                let kind = m["type"].as_str().unwrap_or("unknown").to_string();
                let text = (kind == "text")
                    .then(|| m["text"]["body"].as_str().map(str::to_string))
                    .flatten();
                out.push(Inbound {
                    channel: Channel::WhatsApp,
                    provider_message_id: id.to_string(),
                    sender: wa_id.map(|w| phone::normalize(w).unwrap_or_else(|_| w.to_string())),
                    sender_bsuid: bsuid.map(str::to_string),
                    reply_to: wa_id.or(bsuid).map(str::to_string),
                    message_type: kind,
                    raw_text: text,
                });
            }
        }
    }
    out
}

/// Cloud API notifications. The signature is checked before the body is parsed
/// or stored; text messages are stored once per `messages[].id` and processed
/// after the answer; statuses are acknowledged and ignored.
#[utoipa::path(post, path = "/api/wa-parser/whatsapp/webhook", tag = "webhooks",
    params(("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC-SHA256(app secret, raw body)>")),
    request_body(content = Object, description = "A WhatsApp Business Account notification {object, entry:[{id, changes:[{field, value:{messaging_product, metadata, contacts, messages | statuses}}]}]}"),
    responses(
        (status = 200, description = "Received (stored, or nothing to store)"),
        (status = 400, description = "Signed, but not JSON"),
        (status = 401, description = "Signature missing or wrong"),
        (status = 503, description = "Not stored (database unavailable); the provider retries")))]
async fn whatsapp(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !signature_ok(&s.settings.app_secret, &headers, &body) {
        tracing::warn!(
            bytes = body.len(),
            "WhatsApp webhook refused: missing or bad X-Hub-Signature-256"
        );
        return ApiError::unauthorized("Missing or invalid X-Hub-Signature-256.").into_response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::bad_request(format!("The body is not JSON: {e}")).into_response()
        }
    };
    let msgs = whatsapp_messages(&v);
    if msgs.is_empty() {
        return (StatusCode::OK, Json(json!({"received": 0}))).into_response();
    }
    match store(&s.ctx.pool, &msgs).await {
        Ok(new) => {
            if new > 0 {
                s.worker.wake();
            }
            (
                StatusCode::OK,
                Json(json!({"received": msgs.len(), "new": new})),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Africa's Talking's inbound SMS callback.
#[utoipa::path(post, path = "/api/wa-parser/sms/{token}", tag = "webhooks",
    params(("token" = String, Path, description = "ISP_WA_PARSER_SMS_PATH_TOKEN")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "from, to, text, date, id, linkId (and networkCode, cost)"),
    responses(
        (status = 200, description = "Received (stored once per id; a message to another number than the shortcode is ignored)"),
        (status = 400, description = "from or id missing (each named)"),
        (status = 403, description = "Source address not in ISP_WA_PARSER_SMS_ALLOWLIST"),
        (status = 404, description = "Wrong path token"),
        (status = 503, description = "Not stored (database unavailable); the provider retries")))]
async fn sms(State(s): State<AppState>, Path(token): Path<String>, req: Request) -> Response {
    if !secret_eq(&token, &s.settings.sms_path_token) {
        tracing::warn!("SMS callback refused: wrong path token");
        return ApiError::not_found("Route").into_response();
    }
    if !s.settings.sms_allowlist.is_empty() {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if !peer.is_some_and(|ip| s.settings.sms_allowlist.iter().any(|n| n.contains(&ip))) {
            tracing::warn!(?peer, "SMS callback refused: source not in the allowlist");
            return ApiError::forbidden("The source address is not allowed.").into_response();
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::bad_request("The body is too large.").into_response(),
    };
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut missing = vec![];
    for k in ["from", "id"] {
        if field(k).is_none() {
            missing.push(FieldError::new(k, format!("{k} is required.")));
        }
    }
    if !missing.is_empty() {
        return ApiError::BadRequest(missing).into_response();
    }
    let (from, id) = (
        field("from").unwrap_or_default(),
        field("id").unwrap_or_default(),
    );
    if let (Some(code), Some(to)) = (&s.settings.sms_shortcode, field("to")) {
        if to.trim_start_matches('+') != code.trim_start_matches('+') {
            tracing::info!(%to, "SMS to another number than our shortcode ignored");
            return (StatusCode::OK, Json(json!({"received": 0}))).into_response();
        }
    }
    let sender = phone::normalize(&from).unwrap_or_else(|_| from.clone());
    let msg = Inbound {
        channel: Channel::Sms,
        provider_message_id: id,
        reply_to: Some(sender.clone()),
        sender: Some(sender),
        sender_bsuid: None,
        message_type: "text".into(),
        raw_text: Some(form.get("text").cloned().unwrap_or_default()),
    };
    match store(&s.ctx.pool, &[msg]).await {
        Ok(new) => {
            if new > 0 {
                s.worker.wake();
            }
            (StatusCode::OK, Json(json!({"received": 1, "new": new}))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_with_number_bsuid_or_both_and_statuses_skipped() {
        let v = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": {
                "contacts": [{"profile": {"name": "A"}, "wa_id": "254712345678", "user_id": "US.1"},
                             {"profile": {"name": "B"}, "user_id": "US.2"}],
                "messages": [
                    {"from": "254712345678", "id": "wamid.1", "type": "text", "text": {"body": "HELP"}},
                    {"from_user_id": "US.2", "id": "wamid.2", "type": "image", "image": {}},
                    {"id": "", "type": "text"}],
                "statuses": [{"id": "wamid.0", "status": "read"}]}},
            {"field": "account_update", "value": {}}]}]});
        let m = whatsapp_messages(&v);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].sender.as_deref(), Some("+254712345678"));
        assert_eq!(m[0].sender_bsuid.as_deref(), Some("US.1"));
        assert_eq!(m[0].reply_to.as_deref(), Some("254712345678"));
        assert_eq!(m[0].raw_text.as_deref(), Some("HELP"));
        assert_eq!(m[1].sender, None);
        assert_eq!(m[1].sender_bsuid.as_deref(), Some("US.2"));
        assert_eq!(m[1].reply_to.as_deref(), Some("US.2"));
        assert_eq!(m[1].message_type, "image");
        assert_eq!(m[1].raw_text, None);
    }

    #[test]
    fn signature_good_bad_missing_altered() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let sig = format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&key, body).as_ref())
        );
        let mut h = HeaderMap::new();
        assert!(!signature_ok("secret", &h, body), "missing");
        h.insert("x-hub-signature-256", sig.parse().unwrap());
        assert!(signature_ok("secret", &h, body), "good");
        assert!(!signature_ok("other", &h, body), "other secret");
        assert!(
            !signature_ok("secret", &h, br#"{"object":"whatsapp_business_accounT"}"#),
            "altered"
        );
        h.insert("x-hub-signature-256", "sha256=zz".parse().unwrap());
        assert!(!signature_ok("secret", &h, body), "not hex");
    }
}
