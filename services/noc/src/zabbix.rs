//! `POST /api/noc/zabbix/webhook`: Zabbix's webhook media type
//! (`deploy/zabbix/media_type.yaml`) posts each problem, update and recovery here;
//! we publish `network.problem`, `network.problem_updated` and `network.recovered`
//! once per Zabbix message (Support turns them into one ticket per problem).
//!
//! Classification follows Zabbix's own helpdesk media types: an update
//! (`{EVENT.UPDATE.STATUS}` = 1: acknowledgement, comment, severity change) is
//! checked first, because updates carry `{EVENT.VALUE}` = 1 like the problem and
//! would otherwise open a second ticket. Every answer carries the ticket's id in
//! the `tags` JSON those media types return (`process_tags`), so Zabbix links the
//! problem to its ticket. The id is derived from the problem's event id
//! ([`network_ticket_id`]), the same one Support gives the ticket, so we can answer
//! at once without waiting for Support.
//!
//! Zabbix cannot sign requests, so the media type sends a shared token as
//! `Authorization: Bearer <token>`. The token is `ISP_NOC_ZABBIX_TOKEN`, or the file
//! `<data>/keys/zabbix-webhook.token` created on first start (paste it into the
//! media type's `token` parameter), readable by its owner only. The token is
//! checked (in constant time) before the body is even parsed, so an unauthenticated
//! caller learns nothing about what the endpoint accepts.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use isp_events::outbox::enqueue;
use axum::body::Bytes;
use isp_events::payloads::{
    network_ticket_id, NetworkProblem, NetworkProblemUpdated, NetworkRecovered, ZabbixEvent,
};
use isp_platform::auth::secret_eq;
use isp_platform::http::parse_json_body;
use isp_platform::{ApiError, ApiResult, ServiceContext};
use ring::rand::SecureRandom;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

#[derive(Clone)]
struct St {
    ctx: Arc<ServiceContext>,
    token: Arc<String>,
}

pub fn load_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = isp_platform::config::env_opt("ISP_NOC_ZABBIX_TOKEN") {
        return Ok(t);
    }
    let file = data_dir.join("keys").join("zabbix-webhook.token");
    if file.exists() {
        return Ok(std::fs::read_to_string(&file)?.trim().to_string());
    }
    let mut raw = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    match isp_platform::config::write_secret_file(&file, &token, false) {
        Ok(()) => {
            tracing::info!(path = %file.display(), "generated the Zabbix webhook token");
            Ok(token)
        }
        // Another NOC replica sharing the data folder wrote it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(std::fs::read_to_string(&file)?.trim().to_string())
        }
        Err(e) => Err(anyhow::anyhow!("writing {}: {e}", file.display())),
    }
}

pub fn routes(ctx: Arc<ServiceContext>, token: String) -> Router {
    Router::new()
        .route("/api/noc/zabbix/webhook", post(webhook))
        .with_state(St {
            ctx,
            token: Arc::new(token),
        })
}

#[derive(OpenApi)]
#[openapi(paths(webhook), components(schemas(ZabbixWebhook)))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// What the media type's script posts; every value is a Zabbix macro's text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZabbixWebhook {
    /// {EVENT.ID}: the problem's event id (also on its recovery).
    event_id: String,
    /// {EVENT.VALUE}: "1" problem, "0" recovery.
    event_value: String,
    /// {EVENT.NAME}
    #[serde(default)]
    event_name: String,
    /// {EVENT.SEVERITY}
    #[serde(default)]
    severity: String,
    /// {EVENT.RECOVERY.ID}
    #[serde(default)]
    recovery_event_id: Option<String>,
    /// {EVENT.UPDATE.STATUS}: "1" for acknowledgements and other updates.
    #[serde(default)]
    update_status: Option<String>,
    /// {HOST.NAME}
    #[serde(default)]
    host_name: String,
    /// {HOST.IP}
    #[serde(default)]
    host_ip: Option<String>,
    /// {TRIGGER.ID}
    #[serde(default)]
    trigger_id: Option<String>,
    /// {EVENT.SOURCE}: "0" trigger events (the only ones that become tickets).
    #[serde(default)]
    event_source: Option<String>,
    /// {EVENT.UPDATE.ACTION}, e.g. "acknowledged".
    #[serde(default)]
    update_action: Option<String>,
    /// {EVENT.UPDATE.MESSAGE}
    #[serde(default)]
    update_message: Option<String>,
    /// {USER.FULLNAME}: who updated the problem.
    #[serde(default)]
    update_user: Option<String>,
    /// {EVENT.UPDATE.DATE} {EVENT.UPDATE.TIME}: tells two updates apart.
    #[serde(default)]
    update_time: Option<String>,
}

/// What a Zabbix message is, checked in this order.
#[derive(Debug, PartialEq)]
enum Class {
    Update,
    Problem,
    Recovery,
}

fn classify(body: &ZabbixWebhook) -> ApiResult<Class> {
    if expanded(&body.update_status).as_deref() == Some("1") {
        return Ok(Class::Update);
    }
    match body.event_value.trim() {
        "1" => Ok(Class::Problem),
        "0" => Ok(Class::Recovery),
        _ => Err(ApiError::field(
            "eventValue",
            "Must be \"1\" (problem) or \"0\" (recovery).",
        )),
    }
}

/// The body Zabbix's helpdesk media types return: Zabbix stores the tags on the
/// problem event (`process_tags`) and the event menu links to the ticket.
fn answer(ctx: &ServiceContext, message: &str, problem_id: &str) -> Json<Value> {
    let ticket = network_ticket_id(problem_id);
    let link = format!(
        "{}/api/support/tickets?where[ticketID][equals]={ticket}",
        ctx.config.public_url.trim_end_matches('/')
    );
    Json(json!({
        "message": message,
        "tags": {"__zbx_isp_ticket_id": ticket, "__zbx_isp_ticketlink": link},
    }))
}

/// A macro Zabbix left unexpanded (e.g. `{EVENT.RECOVERY.ID}` on a problem) is absent.
fn expanded(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !(s.is_empty() || s.starts_with('{') && s.ends_with('}')))
        .map(String::from)
}

#[utoipa::path(post, path = "/api/noc/zabbix/webhook", tag = "zabbix", request_body = ZabbixWebhook,
    responses((status = 200, description = "{message, tags: {__zbx_isp_ticket_id, __zbx_isp_ticketlink}}: published, duplicate or ignored; the tags name the problem's Support ticket (NET-<eventId>)"), (status = 400), (status = 401)))]
async fn webhook(
    State(st): State<St>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !secret_eq(given.trim().as_bytes(), st.token.as_bytes()) {
        return Err(ApiError::unauthorized(
            "A valid Zabbix webhook token is required.",
        ));
    }
    // Parsed only once the caller is known to be our Zabbix.
    let body: ZabbixWebhook = parse_json_body(&raw)?;
    let event_id = body.event_id.trim().to_string();
    if event_id.is_empty() || event_id.starts_with('{') {
        return Err(ApiError::field("eventId", "eventId is required."));
    }
    if expanded(&body.event_source).is_some_and(|s| s != "0") {
        // Discovery, autoregistration, internal and service events are not network
        // problems a customer can have; Zabbix's own helpdesk types refuse them too.
        return Ok(Json(
            json!({"message": "Only trigger events (eventSource 0) become tickets."}),
        ));
    }
    let class = classify(&body)?;
    let at = chrono::Utc::now();
    let text = |v: &Option<String>| expanded(v);
    // {EVENT.ID} is the original problem in problem, update and recovery messages.
    let (key, payload): (String, Payload) = match class {
        Class::Update => {
            let fingerprint = ring::digest::digest(
                &ring::digest::SHA256,
                serde_json::to_string(&(
                    text(&body.update_action),
                    text(&body.update_message),
                    text(&body.update_user),
                    text(&body.update_time),
                    body.severity.trim(),
                ))
                .unwrap_or_default()
                .as_bytes(),
            );
            let hex: String = fingerprint
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (
                format!("update:{event_id}:{hex}"),
                Payload::Updated(NetworkProblemUpdated {
                    event_id: event_id.clone(),
                    action: text(&body.update_action),
                    message: text(&body.update_message),
                    user: text(&body.update_user),
                    severity: Some(body.severity.trim().to_string()).filter(|s| !s.is_empty()),
                    at,
                }),
            )
        }
        Class::Problem | Class::Recovery => {
            let problem = class == Class::Problem;
            let ev = ZabbixEvent {
                event_id: if problem {
                    event_id.clone()
                } else {
                    expanded(&body.recovery_event_id).unwrap_or_else(|| event_id.clone())
                },
                name: body.event_name.trim().to_string(),
                severity: body.severity.trim().to_string(),
                host: body.host_name.trim().to_string(),
                host_ip: expanded(&body.host_ip),
                trigger_id: expanded(&body.trigger_id),
                at,
                recovery_of: (!problem).then(|| event_id.clone()),
            };
            if problem {
                (format!("problem:{event_id}"), Payload::Problem(ev))
            } else {
                (format!("recovery:{event_id}"), Payload::Recovered(ev))
            }
        }
    };
    let mut tx = st.ctx.pool.begin().await?;
    let fresh =
        sqlx::query("INSERT INTO zabbix_events (event_key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    if !fresh {
        // An escalation step re-sending the problem, or the media type retrying.
        return Ok(answer(&st.ctx, "Already received.", &event_id));
    }
    match payload {
        Payload::Problem(ev) => enqueue(&mut tx, st.ctx.name, &NetworkProblem(ev)).await,
        Payload::Recovered(ev) => enqueue(&mut tx, st.ctx.name, &NetworkRecovered(ev)).await,
        Payload::Updated(ev) => enqueue(&mut tx, st.ctx.name, &ev).await,
    }
    .map_err(ApiError::Internal)?;
    tx.commit().await?;
    Ok(answer(&st.ctx, "Published.", &event_id))
}

enum Payload {
    Problem(ZabbixEvent),
    Recovered(ZabbixEvent),
    Updated(NetworkProblemUpdated),
}
