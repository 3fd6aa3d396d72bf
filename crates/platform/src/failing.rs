//! `failingEvents`, which every service serves: the events its consumers are
//! failing on (the `failing_events` table of the shared migrations, written by
//! `isp_events`' consumer), readable by Admin, and the one way to give up on an
//! event that can never apply: `POST .../failingEvents/{id}/skip` records it as
//! processed without its effect, so the next redelivery is acknowledged. A skipped
//! row stays, with who skipped it and why.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::auth::{HasKeys, Keys, Principal, Role, Roles};
use crate::collection::{parse_id, Collection, Field, Kind, Operation};
use crate::http::ApiJson;
use crate::{ApiError, ApiResult, ServiceContext};

/// The documented path, with this placeholder for the service's name.
const PLACEHOLDER: &str = "/api/SERVICE/";
const MAX_REASON: usize = 500;

pub fn collection(service: &str) -> Collection {
    let admin = Roles::of(&[Role::Admin]);
    let f = |name, column, kind| Field::new(name, column, kind).system();
    Collection::new(
        service,
        "failingEvents",
        "failing_events",
        "Failing event",
        vec![
            f("consumer", "consumer", Kind::TEXT),
            f("eventId", "event_id", Kind::Relation),
            f("type", "type", Kind::TEXT),
            f("source", "source", Kind::TEXT),
            f("subject", "subject", Kind::TEXT),
            f(
                "deliveries",
                "deliveries",
                Kind::Int {
                    min: 1,
                    max: i32::MAX as i64,
                },
            ),
            f("lastError", "last_error", Kind::TEXT_AREA),
            f("skippedAt", "skipped_at", Kind::Timestamp),
            f("skippedBy", "skipped_by", Kind::TEXT),
            f("skipReason", "skip_reason", Kind::TEXT_AREA),
        ],
    )
    .access(admin, Roles::NONE, Roles::NONE, Roles::NONE)
    .action("skip", admin)
}

#[derive(Clone)]
struct St {
    ctx: Arc<ServiceContext>,
    coll: Arc<Collection>,
}

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

/// The skip route and its OpenAPI document, at `/api/<service>/...`.
pub fn routes(
    ctx: Arc<ServiceContext>,
    coll: Arc<Collection>,
) -> (Router, utoipa::openapi::OpenApi) {
    #[derive(OpenApi)]
    #[openapi(paths(skip), components(schemas(SkipInput)))]
    struct Doc;
    let prefix = format!("/api/{}/", ctx.name);
    let mut doc = Doc::openapi();
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(path, item)| (path.replacen(PLACEHOLDER, &prefix, 1), item))
        .collect();
    let router = Router::new()
        .route(&format!("{prefix}failingEvents/{{id}}/skip"), post(skip))
        .with_state(St { ctx, coll });
    (router, doc)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkipInput {
    /// Why the event can never be applied (kept with the row and logged).
    // Not blank and no NUL, in the whitespace of `openapi::WS` (what `trim` removes).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000]*[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u0000][^\u0000]*$"
    )]
    reason: String,
}

/// Skips a failing event (Admin): its consumer records it as processed without
/// applying it and acknowledges it at the next redelivery. Its effect is lost
/// for this service, so do it only for an event that can never apply, and make
/// the change by hand where one is owed (docs/operations.md).
#[utoipa::path(post, path = "/api/SERVICE/failingEvents/{id}/skip", tag = "failingEvents",
    params(("id" = Uuid, Path, description = "The failingEvents row")),
    request_body = SkipInput,
    security(("jwt" = [])),
    responses(
        (status = 200, description = "{doc: the row, now with skippedAt, skippedBy and skipReason, message}"),
        (status = 400, description = "reason missing, blank or longer than 500 characters; an unknown field"),
        (status = 409, description = "Skipped already, or applied meanwhile (the row is gone)")))]
async fn skip(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SkipInput>,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Action("skip"))?;
    let id = parse_id(&id)?;
    let reason = input.reason.trim();
    if reason.is_empty() || input.reason.chars().count() > MAX_REASON {
        return Err(ApiError::field(
            "reason",
            format!("Say why the event is skipped, in 1 to {MAX_REASON} characters."),
        ));
    }
    let mut tx = s.ctx.pool.begin().await?;
    let row: Option<(String, Uuid, String, bool)> = sqlx::query_as(
        "SELECT consumer, event_id, type, skipped_at IS NOT NULL FROM failing_events
         WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((consumer, event, kind, skipped)) = row else {
        return Err(ApiError::not_found("Failing event"));
    };
    if skipped {
        return Err(ApiError::conflict("This event was skipped already."));
    }
    // Waits for a delivery in hand; if that one applied the event, there is
    // nothing to skip.
    let marked = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&consumer)
    .bind(event)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if marked == 0 {
        sqlx::query("DELETE FROM failing_events WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Err(ApiError::conflict(
            "The event was applied meanwhile: there is nothing to skip.",
        ));
    }
    sqlx::query(
        "UPDATE failing_events SET skipped_at = now(), skipped_by = $2, skip_reason = $3,
             updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(p.label())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    let doc = s
        .coll
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Failing event"))?;
    tx.commit().await?;
    tracing::warn!(%consumer, %event, r#type = %kind, by = %p.label(), %reason, "failing event skipped: it will not be applied");
    Ok(Json(json!({
        "doc": s.coll.present(&p, &doc),
        "message": "Skipped: the consumer acknowledges it at its next delivery without applying it.",
    })))
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    /// The documented pattern is the engine's "not blank, no NUL" one, so a
    /// generated client refuses exactly what the handler refuses.
    #[test]
    fn the_reason_pattern_is_the_engines_not_blank_text() {
        let doc = SkipInput::schema();
        let json = serde_json::to_value(&doc).unwrap();
        let ws = crate::openapi::WS;
        assert_eq!(
            json["properties"]["reason"]["pattern"],
            format!("^[^\\u0000]*[^{ws}\\u0000][^\\u0000]*$")
        );
    }
}
