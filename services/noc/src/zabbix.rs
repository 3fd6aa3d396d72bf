//! `POST /api/noc/zabbix/webhook`: Zabbix's webhook media type
//! (`deploy/zabbix/media_type.yaml`) posts each problem and recovery here; we
//! publish `network.problem` / `network.recovered` once per Zabbix event (Support
//! turns them into tickets).
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
use isp_events::payloads::{NetworkProblem, NetworkRecovered, ZabbixEvent};
use axum::body::Bytes;
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
}

/// A macro Zabbix left unexpanded (e.g. `{EVENT.RECOVERY.ID}` on a problem) is absent.
fn expanded(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !(s.is_empty() || s.starts_with('{') && s.ends_with('}')))
        .map(String::from)
}

#[utoipa::path(post, path = "/api/noc/zabbix/webhook", tag = "zabbix", request_body = ZabbixWebhook,
    responses((status = 200, description = "{message} (published, duplicate or ignored)"), (status = 400), (status = 401)))]
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
    let body: ZabbixWebhook = parse_json_body(&raw)?;
    let event_id = body.event_id.trim().to_string();
    if event_id.is_empty() || event_id.starts_with('{') {
        return Err(ApiError::field("eventId", "eventId is required."));
    }
    if expanded(&body.update_status).as_deref() == Some("1") {
        return Ok(Json(json!({"message": "Update ignored."})));
    }
    let problem = match body.event_value.trim() {
        "1" => true,
        "0" => false,
        _ => {
            return Err(ApiError::field(
                "eventValue",
                "Must be \"1\" (problem) or \"0\" (recovery).",
            ))
        }
    };
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
        at: chrono::Utc::now(),
        recovery_of: (!problem).then(|| event_id.clone()),
    };
    let key = format!(
        "{}:{event_id}",
        if problem { "problem" } else { "recovery" }
    );
    let mut tx = st.ctx.pool.begin().await?;
    let fresh =
        sqlx::query("INSERT INTO zabbix_events (event_key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    if !fresh {
        return Ok(Json(json!({"message": "Already received."})));
    }
    if problem {
        enqueue(&mut tx, st.ctx.name, &NetworkProblem(ev)).await
    } else {
        enqueue(&mut tx, st.ctx.name, &NetworkRecovered(ev)).await
    }
    .map_err(ApiError::Internal)?;
    tx.commit().await?;
    Ok(Json(json!({"message": "Published."})))
}
