//! `inboundMessages`: the parse log, through the collection engine. Admin and
//! Sales Agents read it; nobody writes it over the API (every field is the
//! worker's). `POST /api/wa-parser/inboundMessages/{id}/reprocess` lets an Admin
//! run a failed message through again once (after the partner was activated or
//! the building created, say).

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{parse_id, Collection, Field, Kind, Operation};
use isp_platform::query::{ListQuery, Page};
use isp_platform::{ApiError, ApiResult};
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::AppState;

isp_events::spec_enum! {
    /// Where a message came in.
    Channel { WhatsApp = "WhatsApp", Sms = "SMS" }
}

isp_events::spec_enum! {
    /// What became of a message: Pending (and CRM unavailable) until the worker
    /// decides, then one of the others.
    Outcome {
        Pending = "Pending",
        LeadCreated = "Lead created",
        Duplicate = "Duplicate",
        UnknownSender = "Unknown sender",
        InactivePartner = "Inactive partner",
        ParseError = "Parse error",
        CrmUnavailable = "CRM unavailable",
        Rejected = "Rejected",
        Help = "Help",
        NotText = "Not text",
    }
}

impl Outcome {
    /// Still the worker's to decide.
    pub fn open(self) -> bool {
        matches!(self, Self::Pending | Self::CrmUnavailable)
    }

    /// An Admin may re-process it: the message did not become a lead for a reason
    /// that may have gone away.
    pub fn reprocessable(self) -> bool {
        matches!(
            self,
            Self::UnknownSender
                | Self::InactivePartner
                | Self::ParseError
                | Self::Rejected
                | Self::NotText
        )
    }
}

isp_events::spec_enum! {
    /// The reply's progress: Pending (a WhatsApp reply to send), Requested (an SMS
    /// reply handed to Notify), Sent or Failed.
    ReplyStatus { Pending = "Pending", Sent = "Sent", Failed = "Failed", Requested = "Requested" }
}

pub fn collection() -> Collection {
    let readers = Roles::of(&[Role::Admin, Role::SalesAgent]);
    Collection::new(
        "wa-parser",
        "inboundMessages",
        "inbound_messages",
        "Inbound message",
        vec![
            Field::new("channel", "channel", Kind::Select(Channel::ALL)).system(),
            Field::new("providerMessageId", "provider_message_id", Kind::TEXT).system(),
            Field::new("sender", "sender", Kind::TEXT).system(),
            Field::new("senderBsuid", "sender_bsuid", Kind::TEXT).system(),
            Field::new("partner", "partner", Kind::Relation).system(),
            Field::new("messageType", "message_type", Kind::TEXT).system(),
            Field::new("rawText", "raw_text", Kind::TEXT_AREA).system(),
            Field::new("receivedAt", "received_at", Kind::Timestamp).system(),
            Field::new("outcome", "outcome", Kind::Select(Outcome::ALL)).system(),
            Field::new("reason", "reason", Kind::TEXT_AREA).system(),
            Field::new("lead", "lead", Kind::Relation).system(),
            Field::new("reply", "reply", Kind::TEXT_AREA).system(),
            Field::new(
                "replyStatus",
                "reply_status",
                Kind::Select(ReplyStatus::ALL),
            )
            .system(),
            Field::new("replyError", "reply_error", Kind::TEXT_AREA).system(),
            Field::new(
                "attempts",
                "attempts",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            )
            .system(),
            Field::new("processedAt", "processed_at", Kind::Timestamp).system(),
            Field::new("reprocessedAt", "reprocessed_at", Kind::Timestamp).system(),
            Field::new("previousOutcome", "previous_outcome", Kind::TEXT).system(),
        ],
    )
    .access(readers, Roles::NONE, Roles::NONE, Roles::NONE)
}

/// Only reads (through the collection engine's list and find, so filters, sort,
/// paging and field access are the platform's) and the re-process: there is no
/// create, update or delete route at all, so no role or service scope can write
/// the log (other methods are a 405).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/wa-parser/inboundMessages", get(list))
        .route("/api/wa-parser/inboundMessages/{id}", get(get_one))
        .route(
            "/api/wa-parser/inboundMessages/{id}/reprocess",
            post(reprocess),
        )
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(paths(reprocess))]
struct ReprocessDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    ReprocessDoc::openapi()
}

/// The collection's generated document without the write operations it does not
/// serve.
pub fn read_only(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for (path, item) in doc.paths.paths.iter_mut() {
        if path.starts_with("/api/wa-parser/inboundMessages") && !path.ends_with("/reprocess") {
            item.post = None;
            item.patch = None;
            item.delete = None;
        }
    }
    doc
}

fn check_read(c: &Collection, p: &Principal) -> ApiResult<()> {
    if c.allowed(p, Operation::Read) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "You are not allowed to read inboundMessages.",
        ))
    }
}

async fn list(
    State(s): State<AppState>,
    p: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Value>>> {
    check_read(&s.coll, &p)?;
    let q = ListQuery::parse(raw.as_deref())?;
    let mut conn = s.ctx.pool.acquire().await?;
    Ok(Json(s.coll.list(&mut conn, &p, &q).await?))
}

async fn get_one(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_read(&s.coll, &p)?;
    let id = parse_id(&id)?;
    let mut conn = s.ctx.pool.acquire().await?;
    let doc = s.coll.find_scoped(&mut conn, &p, id, false).await?;
    Ok(Json(s.coll.present(&p, &doc)))
}

/// Runs a failed message (Unknown sender, Inactive partner, Parse error,
/// Rejected, Not text) through processing again, once per message. The earlier
/// outcome is kept in `previousOutcome`; the new one arrives like any other.
#[utoipa::path(post, path = "/api/wa-parser/inboundMessages/{id}/reprocess", tag = "inboundMessages",
    params(("id" = uuid::Uuid, Path, description = "Inbound message id")),
    responses(
        (status = 202, description = "{doc: the message (outcome Pending), message}"),
        (status = 400, description = "Not a valid id"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Not an Admin"),
        (status = 404, description = "No such message"),
        (status = 409, description = "Already re-processed once, or its outcome is not a failure")))]
async fn reprocess(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<(axum::http::StatusCode, Json<Value>)> {
    p.require_roles(Roles::of(&[Role::Admin]))?;
    let id = parse_id(&id)?;
    let mut tx = s.ctx.pool.begin().await?;
    let current: Option<(Outcome, bool)> = sqlx::query_as(
        "SELECT outcome, reprocessed_at IS NOT NULL FROM inbound_messages WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((outcome, done_once)) = current else {
        return Err(ApiError::not_found("Inbound message"));
    };
    if done_once {
        return Err(ApiError::conflict(
            "This message was already re-processed once.",
        ));
    }
    if !outcome.reprocessable() {
        return Err(ApiError::conflict_field(
            "outcome",
            format!("Only a failed message can be re-processed (this one is {outcome})."),
        ));
    }
    sqlx::query(
        "UPDATE inbound_messages SET previous_outcome = outcome, outcome = 'Pending', reason = NULL,
             reply = NULL, reply_status = NULL, reply_error = NULL, reply_id = NULL, processed_at = NULL,
             attempts = 0, next_attempt_at = now(), reprocessed_at = now(), reprocessed_by = $2,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(p.staff_id())
    .execute(&mut *tx)
    .await?;
    let doc = s
        .coll
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Inbound message"))?;
    tx.commit().await?;
    s.worker.wake();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(
            json!({"doc": s.coll.present(&p, &doc), "message": "The message will be processed again."}),
        ),
    ))
}
