//! Billing's own REST routes for invoices and expenses: the same list, get,
//! create, update and delete as the platform's generic collection routes (same
//! engine, same access checks and answers), with two differences the generic
//! ones cannot express (a platform change would be the better home for both):
//! - an invoice edit takes the daily-run lock, then the subscriber's row, then the
//!   invoice's row: the order payments and the run use. The generic update locks
//!   the invoice row first and only then waits for a running daily run, which may
//!   itself be waiting for that row (a deadlock Postgres breaks by failing one);
//! - an expense's receipt file is deleted only after the row's deletion commits, so
//!   a rolled-back delete never leaves a row pointing at a missing file.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::collection::{parse_body, parse_id, Collection, Operation};
use isp_platform::query::{ListQuery, Page};
use isp_platform::{ApiError, ApiResult, ServiceContext};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::storage::Storage;

#[derive(Clone)]
enum Extra {
    Invoices,
    Expenses(Arc<dyn Storage>),
}

#[derive(Clone)]
struct St {
    ctx: Arc<ServiceContext>,
    coll: Arc<Collection>,
    extra: Extra,
}

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

pub fn invoices(ctx: Arc<ServiceContext>, coll: Arc<Collection>) -> Router {
    router(ctx, coll, Extra::Invoices)
}

pub fn expenses(
    ctx: Arc<ServiceContext>,
    coll: Arc<Collection>,
    storage: Arc<dyn Storage>,
) -> Router {
    router(ctx, coll, Extra::Expenses(storage))
}

fn router(ctx: Arc<ServiceContext>, coll: Arc<Collection>, extra: Extra) -> Router {
    let base = format!("/api/{}/{}", ctx.name, coll.slug);
    Router::new()
        .route(&base, get(list).post(create))
        .route(
            &format!("{base}/{{id}}"),
            get(get_one).patch(update).delete(delete),
        )
        .with_state(St { ctx, coll, extra })
}

fn check(coll: &Collection, p: &Principal, op: Operation) -> ApiResult<()> {
    if coll.allowed(p, op) {
        return Ok(());
    }
    let verb = match op {
        Operation::Read => "read",
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
    };
    Err(ApiError::forbidden(format!(
        "You are not allowed to {verb} {}.",
        coll.slug
    )))
}

async fn list(
    State(s): State<St>,
    p: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Value>>> {
    check(&s.coll, &p, Operation::Read)?;
    let q = ListQuery::parse(raw.as_deref())?;
    let mut conn = s.ctx.pool.acquire().await?;
    Ok(Json(s.coll.list(&mut conn, &p, &q).await?))
}

async fn get_one(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check(&s.coll, &p, Operation::Read)?;
    let id = parse_id(&id)?;
    let mut conn = s.ctx.pool.acquire().await?;
    let doc = s.coll.find_scoped(&mut conn, &p, id, false).await?;
    Ok(Json(s.coll.present(&p, &doc)))
}

async fn create(
    State(s): State<St>,
    p: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check(&s.coll, &p, Operation::Create)?;
    let data = s.coll.validate_input(&p, &parse_body(&body)?, true)?;
    let mut tx = s.ctx.pool.begin().await?;
    // Invoices: the hooks take the run lock, then the subscriber (no row is
    // locked before that).
    let doc = s.coll.create_in(&mut tx, &s.ctx, &p, data).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "doc": s.coll.present(&p, &doc),
            "message": format!("{} successfully created.", s.coll.label),
        })),
    ))
}

async fn update(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check(&s.coll, &p, Operation::Update)?;
    let id = parse_id(&id)?;
    let data = s.coll.validate_input(&p, &parse_body(&body)?, false)?;
    let mut tx = s.ctx.pool.begin().await?;
    if let Extra::Invoices = s.extra {
        crate::daily::wait_for_run(&mut tx).await?;
        let sub: Option<Uuid> =
            sqlx::query_scalar("SELECT subscriber_id FROM invoices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(sub) = sub {
            crate::collections::lock_subscriber(&mut tx, sub).await?;
        }
    }
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    let doc = s
        .coll
        .update_in(&mut tx, &s.ctx, &p, &existing, data)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "doc": s.coll.present(&p, &doc),
        "message": format!("{} successfully updated.", s.coll.label),
    })))
}

async fn delete(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check(&s.coll, &p, Operation::Delete)?;
    let id = parse_id(&id)?;
    let mut tx = s.ctx.pool.begin().await?;
    let existing = s.coll.find_scoped(&mut tx, &p, id, true).await?;
    s.coll.hooks.before_delete(&mut tx, &p, &existing).await?;
    let file: Option<(Arc<dyn Storage>, String)> = match &s.extra {
        Extra::Expenses(storage) => {
            let key: Option<String> =
                sqlx::query_scalar("SELECT receipt_key FROM expenses WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            key.map(|k| (storage.clone(), k))
        }
        Extra::Invoices => None,
    };
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
    tx.commit().await?;
    if let Some((storage, key)) = file {
        // The row is gone for good: now the file may go. A failure here only
        // leaves an orphaned file behind.
        if let Err(e) = storage.delete(&key).await {
            tracing::warn!(error = ?e, key, "could not delete a deleted expense's receipt file");
        }
    }
    Ok(Json(json!({
        "doc": s.coll.present(&p, &existing),
        "message": format!("{} successfully deleted.", s.coll.label),
    })))
}
