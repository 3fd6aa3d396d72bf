//! The generic HTTP handlers every collection gets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch, post, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Collection, Operation, Serve};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::idempotency;
use crate::query::{ListQuery, Page};
use crate::ServiceContext;

type Ctx = Arc<ServiceContext>;

#[derive(Clone)]
struct Routed {
    ctx: Ctx,
    coll: Arc<Collection>,
}

impl crate::auth::HasKeys for Routed {
    fn keys(&self) -> &crate::auth::Keys {
        &self.ctx.keys
    }
}

/// `/api/<svc>/<slug>` and `/api/<svc>/<slug>/{id}`: the generic handler of every
/// operation the collection leaves to the engine, a 403 for those switched off,
/// nothing for those the service serves itself ([`Collection::custom`]).
pub fn routes(coll: Arc<Collection>, ctx: Ctx) -> Router {
    let base = format!("/api/{}/{}", ctx.name, coll.slug);
    let c = &coll;
    let all = method(
        MethodRouter::new(),
        c,
        Operation::Read,
        MethodFilter::GET,
        get(list_handler),
    );
    let all = method(
        all,
        c,
        Operation::Create,
        MethodFilter::POST,
        post(create_handler),
    );
    let one = method(
        MethodRouter::new(),
        c,
        Operation::Read,
        MethodFilter::GET,
        get(get_handler),
    );
    let one = method(
        one,
        c,
        Operation::Update,
        MethodFilter::PATCH,
        patch(update_handler),
    );
    let one = method(
        one,
        c,
        Operation::Delete,
        MethodFilter::DELETE,
        delete(delete_handler),
    );
    let routed = |ops: &[Operation]| ops.iter().any(|op| c.routes_op(*op));
    let mut router = Router::new();
    if routed(&[Operation::Read, Operation::Create]) {
        router = router.route(&base, all);
    }
    if routed(&[Operation::Read, Operation::Update, Operation::Delete]) {
        router = router.route(&format!("{base}/{{id}}"), one);
    }
    router.with_state(Routed { ctx, coll })
}

fn method(
    router: MethodRouter<Routed>,
    coll: &Collection,
    op: Operation,
    filter: MethodFilter,
    engine: MethodRouter<Routed>,
) -> MethodRouter<Routed> {
    match coll.serves(op) {
        Serve::Engine => router.merge(engine),
        Serve::Custom | Serve::Closed => router,
        Serve::Off(message) => router.on(filter, move |_: Principal| async move {
            ApiError::forbidden(message)
        }),
    }
}

pub fn parse_id(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::field("id", "Must be a valid id."))
}

/// Parses a JSON body, answering 400 (never 415/422) for anything unreadable.
pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))
}

async fn list_handler(
    State(s): State<Routed>,
    p: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Value>>> {
    s.coll.authorize(&p, Operation::Read)?;
    let q = ListQuery::parse(raw.as_deref())?;
    let mut conn = s.ctx.pool.acquire().await?;
    Ok(Json(s.coll.list(&mut conn, &p, &q).await?))
}

async fn get_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Read)?;
    let id = parse_id(&id)?;
    let mut conn = s.ctx.pool.acquire().await?;
    let doc = s.coll.find_scoped(&mut conn, &p, id, false).await?;
    Ok(Json(s.coll.present(&p, &doc)))
}

async fn create_handler(
    State(s): State<Routed>,
    p: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.coll.authorize(&p, Operation::Create)?;
    let key = if s.coll.is_idempotent_create() {
        idempotency::key_from(&headers)?
    } else {
        None
    };
    let input = parse_body(&body)?;
    let hash = idempotency::request_hash(&input);
    let mut tx = s.ctx.pool.begin().await?;
    if let Some(k) = &key {
        if let Some((status, answer)) = idempotency::begin(&mut tx, &p, k, &hash).await? {
            return Ok((status, Json(answer)));
        }
    }
    let data = s.coll.validate_in(&mut tx, &p, &input, true).await?;
    let doc = s.coll.create_in(&mut tx, &s.ctx, &p, data).await?;
    let answer = json!({ "doc": s.coll.present(&p, &doc), "message": format!("{} successfully created.", s.coll.label) });
    if let Some(k) = &key {
        idempotency::store(&mut tx, &p, k, &hash, StatusCode::CREATED, &answer).await?;
    }
    tx.commit().await?;
    s.coll.hooks.after_commit(Operation::Create, &doc).await;
    Ok((StatusCode::CREATED, Json(answer)))
}

async fn update_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Update)?;
    let id = parse_id(&id)?;
    let input = parse_body(&body)?;
    let mut tx = s.ctx.pool.begin().await?;
    let data = s.coll.validate_in(&mut tx, &p, &input, false).await?;
    s.coll
        .hooks
        .before_lock(&mut tx, Operation::Update, id)
        .await?;
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    let doc = s
        .coll
        .update_in(&mut tx, &s.ctx, &p, &existing, data)
        .await?;
    tx.commit().await?;
    s.coll.hooks.after_commit(Operation::Update, &doc).await;
    Ok(Json(
        json!({ "doc": s.coll.present(&p, &doc), "message": format!("{} successfully updated.", s.coll.label) }),
    ))
}

async fn delete_handler(
    State(s): State<Routed>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Delete)?;
    let id = parse_id(&id)?;
    let mut tx = s.ctx.pool.begin().await?;
    s.coll
        .hooks
        .before_lock(&mut tx, Operation::Delete, id)
        .await?;
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    s.coll.hooks.before_delete(&mut tx, &p, &existing).await?;
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", s.coll.table))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                ApiError::conflict(format!(
                    "This {} is still referenced by other records.",
                    s.coll.label.to_lowercase()
                ))
            }
            _ => s.coll.map_db_error(e),
        })?;
    s.coll
        .hooks
        .after_delete(&mut tx, &s.ctx, &existing)
        .await?;
    if let Some(ev) = &s.coll.events {
        ev.deleted(&mut tx, &s.ctx, &existing).await?;
    }
    tx.commit().await?;
    s.coll
        .hooks
        .after_commit(Operation::Delete, &existing)
        .await;
    Ok(Json(
        json!({ "doc": s.coll.present(&p, &existing), "message": format!("{} successfully deleted.", s.coll.label) }),
    ))
}
