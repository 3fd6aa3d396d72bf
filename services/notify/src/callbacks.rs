//! Gateways calling us: delivery reports, opt-outs and inbound replies.
//!
//! Africa's Talking does not sign its callbacks, so their URLs carry an
//! unguessable path token (`ISP_NOTIFY_AT_CALLBACK_TOKEN`), compared in constant
//! time before the body is read. Twilio signs every request
//! (`X-Twilio-Signature`), checked in constant time before any field is used.
//! Every handler is idempotent: a status that is not ahead of the current one
//! changes nothing, and the suppression list is a set.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use isp_events::payloads::NotificationChannel;
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::provider::{africastalking, twilio};
use crate::settings::Settings;
use crate::store;

#[derive(Clone)]
struct St {
    ctx: Arc<ServiceContext>,
    settings: Arc<Settings>,
}

pub fn routes(ctx: Arc<ServiceContext>, settings: Arc<Settings>) -> Router {
    Router::new()
        .route(
            "/api/notify/callbacks/africastalking/{token}/delivery",
            post(at_delivery),
        )
        .route(
            "/api/notify/callbacks/africastalking/{token}/optout",
            post(at_optout),
        )
        .route(
            "/api/notify/callbacks/africastalking/{token}/inbound",
            post(at_inbound),
        )
        .route("/api/notify/callbacks/twilio/status", post(twilio_status))
        .route("/api/notify/callbacks/twilio/inbound", post(twilio_inbound))
        .with_state(St { ctx, settings })
}

#[derive(OpenApi)]
#[openapi(
    paths(at_delivery, at_optout, at_inbound, twilio_status, twilio_inbound),
    components(schemas(
        AtDeliveryReport,
        AtOptOut,
        AtInbound,
        TwilioStatusCallback,
        TwilioInbound
    ))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The secret path segment of Africa's Talking's callback URLs.
#[derive(Deserialize, IntoParams)]
#[allow(dead_code)]
struct TokenPath {
    /// `ISP_NOTIFY_AT_CALLBACK_TOKEN` (or the generated
    /// `<data>/keys/notify-africastalking.token`).
    token: String,
}

/// Africa's Talking delivery report (form-encoded).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
struct AtDeliveryReport {
    /// The `messageId` the send answered with.
    id: String,
    /// Success | Sent | Submitted | Buffered | Rejected | Failed | AbsentSubscriber | Expired
    status: String,
    #[schema(nullable)]
    phone_number: Option<String>,
    #[schema(nullable)]
    network_code: Option<String>,
    /// On Rejected / Failed, e.g. InsufficientCredit, UserInBlackList, DeliveryFailure.
    #[schema(nullable)]
    failure_reason: Option<String>,
    #[schema(nullable)]
    retry_count: Option<String>,
}

/// Africa's Talking bulk SMS opt-out (form-encoded).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
struct AtOptOut {
    #[schema(nullable)]
    sender_id: Option<String>,
    phone_number: String,
}

/// Africa's Talking incoming message (form-encoded); only STOP / START
/// keywords are acted on here, anything else is acknowledged and ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
struct AtInbound {
    from: String,
    #[schema(nullable)]
    to: Option<String>,
    text: String,
    #[schema(nullable)]
    date: Option<String>,
    #[schema(nullable)]
    id: Option<String>,
    #[schema(nullable)]
    link_id: Option<String>,
}

/// Twilio message status callback (form-encoded; Twilio adds fields without
/// notice, all of them are signed and ignored unless named here).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "PascalCase")]
struct TwilioStatusCallback {
    message_sid: String,
    /// queued | sending | sent | delivered | undelivered | failed | ...
    message_status: String,
    #[schema(nullable)]
    error_code: Option<String>,
    #[schema(nullable)]
    to: Option<String>,
}

/// Twilio incoming message webhook (form-encoded).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "PascalCase")]
struct TwilioInbound {
    from: String,
    body: String,
}

fn fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

fn get<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Every missing required field at once.
fn require<'a>(f: &'a [(String, String)], names: &[&str]) -> Result<Vec<&'a str>, ApiError> {
    let mut out = vec![];
    let mut missing = vec![];
    for n in names {
        match get(f, n) {
            Some(v) => out.push(v),
            None => missing.push(FieldError::new(*n, format!("{n} is required."))),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::BadRequest(missing))
    }
}

fn check_token(st: &St, given: &str) -> Result<(), ApiError> {
    if bool::from(
        given
            .as_bytes()
            .ct_eq(st.settings.at_callback_token.as_bytes()),
    ) {
        Ok(())
    } else {
        Err(ApiError::not_found("callback"))
    }
}

fn ok(message: &str) -> Json<Value> {
    Json(json!({ "message": message }))
}

#[utoipa::path(post, path = "/api/notify/callbacks/africastalking/{token}/delivery", tag = "callbacks",
    params(TokenPath),
    request_body(content = AtDeliveryReport, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "{message}: applied, or not ahead of the delivery's status"),
              (status = 400, description = "A required field is missing or `status` is unknown"),
              (status = 404, description = "Wrong path token")))]
async fn at_delivery(
    State(st): State<St>,
    Path(token): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_token(&st, &token)?;
    let f = fields(&body);
    let v = require(&f, &["id", "status"])?;
    let (id, status) = (v[0], v[1]);
    let Some(ours) = africastalking::report_status(status) else {
        return Err(ApiError::field(
            "status",
            format!("Unknown delivery status {status:?}."),
        ));
    };
    let reason = get(&f, "failureReason");
    let mut tx = st.ctx.pool.begin().await?;
    store::report(&mut tx, "africastalking", id, ours, reason)
        .await
        .map_err(ApiError::Internal)?;
    tx.commit().await?;
    Ok(ok("Recorded."))
}

#[utoipa::path(post, path = "/api/notify/callbacks/africastalking/{token}/optout", tag = "callbacks",
    params(TokenPath),
    request_body(content = AtOptOut, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "{message}: the number is on the suppression list"),
              (status = 400, description = "`phoneNumber` missing or not a phone number"),
              (status = 404, description = "Wrong path token")))]
async fn at_optout(
    State(st): State<St>,
    Path(token): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_token(&st, &token)?;
    let f = fields(&body);
    let phone = require(&f, &["phoneNumber"])?[0];
    let phone =
        isp_platform::phone::normalize(phone).map_err(|e| ApiError::field("phoneNumber", e))?;
    let mut tx = st.ctx.pool.begin().await?;
    store::suppress(
        &mut tx,
        NotificationChannel::Sms,
        &phone,
        "africastalking-optout",
        get(&f, "senderId"),
    )
    .await
    .map_err(ApiError::Internal)?;
    tx.commit().await?;
    Ok(ok("Suppressed."))
}

/// What a reply asks for: the keywords carriers and Twilio treat as opt-out /
/// opt-in (GATEWAYS.md section 3), as the first word of the text.
#[derive(Debug, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
}

pub fn keyword(text: &str) -> Option<Keyword> {
    let first = text
        .split_whitespace()
        .next()?
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_ascii_uppercase();
    match first.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "END" | "QUIT" | "CANCEL" | "OPTOUT" | "REVOKE" => {
            Some(Keyword::Stop)
        }
        "START" | "UNSTOP" | "SUBSCRIBE" => Some(Keyword::Start),
        _ => None,
    }
}

async fn apply_keyword(st: &St, from: &str, text: &str) -> ApiResult<&'static str> {
    let Some(kw) = keyword(text) else {
        return Ok("Ignored.");
    };
    let phone = isp_platform::phone::normalize(from).map_err(|e| ApiError::field("from", e))?;
    let mut tx = st.ctx.pool.begin().await?;
    let word = text.split_whitespace().next();
    let msg = match kw {
        Keyword::Stop => {
            store::suppress(
                &mut tx,
                NotificationChannel::Sms,
                &phone,
                "inbound-stop",
                word,
            )
            .await
            .map_err(ApiError::Internal)?;
            "Suppressed."
        }
        Keyword::Start => {
            store::unsuppress(
                &mut tx,
                NotificationChannel::Sms,
                &phone,
                "inbound-start",
                word,
            )
            .await
            .map_err(ApiError::Internal)?;
            "Unsuppressed."
        }
    };
    tx.commit().await?;
    Ok(msg)
}

#[utoipa::path(post, path = "/api/notify/callbacks/africastalking/{token}/inbound", tag = "callbacks",
    params(TokenPath),
    request_body(content = AtInbound, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "{message}: STOP suppresses, START lifts it, anything else is ignored"),
              (status = 400, description = "`from` or `text` missing, or `from` not a phone number"),
              (status = 404, description = "Wrong path token")))]
async fn at_inbound(
    State(st): State<St>,
    Path(token): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_token(&st, &token)?;
    let f = fields(&body);
    let v = require(&f, &["from", "text"])?;
    Ok(ok(apply_keyword(&st, v[0], v[1]).await?))
}

/// Checks `X-Twilio-Signature` over `url` and the form's fields; returns them.
fn twilio_verified(
    st: &St,
    headers: &HeaderMap,
    url: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    let given = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // An unsigned request is refused as such, whether or not Twilio is set up.
    if given.is_empty() {
        return Err(ApiError::unauthorized(
            "A valid X-Twilio-Signature is required.",
        ));
    }
    let Some(token) = st.settings.twilio_auth_token.as_deref() else {
        return Err(ApiError::not_found("callback"));
    };
    // Signed over the raw decoded values, untrimmed.
    let raw: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !twilio::verify(token, url, &raw, given) {
        return Err(ApiError::unauthorized(
            "A valid X-Twilio-Signature is required.",
        ));
    }
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.trim().to_string()))
        .collect())
}

#[utoipa::path(post, path = "/api/notify/callbacks/twilio/status", tag = "callbacks",
    request_body(content = TwilioStatusCallback, content_type = "application/x-www-form-urlencoded"),
    params(("X-Twilio-Signature" = String, Header, description = "base64 HMAC-SHA1 of the URL and sorted fields")),
    responses((status = 200, description = "{message}: applied, or not ahead of the delivery's status"),
              (status = 400, description = "`MessageSid` or `MessageStatus` missing"),
              (status = 401, description = "Signature missing or wrong"),
              (status = 404, description = "Twilio is not configured")))]
async fn twilio_status(
    State(st): State<St>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let f = twilio_verified(&st, &headers, &st.settings.twilio_status_url, &body)?;
    let v = require(&f, &["MessageSid", "MessageStatus"])?;
    let (sid, status) = (v[0], v[1]);
    let Some(ours) = twilio::status_of(status) else {
        return Ok(ok("Ignored."));
    };
    let code = get(&f, "ErrorCode");
    let reason = code.map(|c| match get(&f, "ErrorMessage") {
        Some(m) => format!("Twilio {c}: {m}"),
        None => format!("Twilio {c}"),
    });
    let mut tx = st.ctx.pool.begin().await?;
    store::report(&mut tx, "twilio", sid, ours, reason.as_deref())
        .await
        .map_err(ApiError::Internal)?;
    if code == Some("21610") {
        if let Some(to) = get(&f, "To").and_then(|t| isp_platform::phone::normalize(t).ok()) {
            store::suppress(
                &mut tx,
                NotificationChannel::Sms,
                &to,
                "twilio-21610",
                reason.as_deref(),
            )
            .await
            .map_err(ApiError::Internal)?;
        }
    }
    tx.commit().await?;
    Ok(ok("Recorded."))
}

#[utoipa::path(post, path = "/api/notify/callbacks/twilio/inbound", tag = "callbacks",
    request_body(content = TwilioInbound, content_type = "application/x-www-form-urlencoded"),
    params(("X-Twilio-Signature" = String, Header, description = "base64 HMAC-SHA1 of the URL and sorted fields")),
    responses((status = 200, description = "Empty TwiML `<Response/>`", content_type = "text/xml"),
              (status = 400, description = "`From` or `Body` missing"),
              (status = 401, description = "Signature missing or wrong"),
              (status = 404, description = "Twilio is not configured")))]
async fn twilio_inbound(
    State(st): State<St>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let f = twilio_verified(&st, &headers, &st.settings.twilio_inbound_url, &body)?;
    let v = require(&f, &["From", "Body"])?;
    apply_keyword(&st, v[0], v[1]).await.map_err(|e| match e {
        ApiError::BadRequest(_) => ApiError::field("From", "From is not a phone number."),
        e => e,
    })?;
    // Twilio answers STOP itself on long codes; we add no reply.
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords() {
        assert_eq!(keyword("stop"), Some(Keyword::Stop));
        assert_eq!(keyword(" STOP please"), Some(Keyword::Stop));
        assert_eq!(keyword("Unsubscribe."), Some(Keyword::Stop));
        assert_eq!(keyword("start"), Some(Keyword::Start));
        assert_eq!(keyword("stopping by later"), None);
        assert_eq!(keyword(""), None);
    }
}
