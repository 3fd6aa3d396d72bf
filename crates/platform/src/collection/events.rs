//! Snapshot events: a stored document published through the outbox in the
//! write's transaction, so other services keep projections of it.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult};
use crate::ServiceContext;

/// Publishes a stored document as a snapshot event through the outbox, inside the
/// caller's transaction: `publish_doc(tx, ctx, doc, PlanCreated).await?`. The
/// document's JSON (camelCase, money as strings) is the snapshot's wire form.
pub async fn publish_doc<S, E>(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    doc: &Value,
    wrap: impl FnOnce(S) -> E,
) -> ApiResult<()>
where
    S: serde::de::DeserializeOwned,
    E: isp_events::EventPayload,
{
    let snapshot: S = serde_json::from_value(doc.clone()).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("{} snapshot of the document: {e}", E::TYPE))
    })?;
    isp_events::outbox::enqueue(tx, ctx.name, &wrap(snapshot))
        .await
        .map_err(ApiError::Internal)?;
    Ok(())
}

/// Publishing of one collection's snapshot events, set with [`Collection::publishes`].
#[async_trait]
pub(super) trait SnapshotEvents: Send + Sync {
    async fn changed(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()>;
    async fn deleted(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()>;
}

pub(super) struct Snapshots<S, C, U, D> {
    pub(super) created: fn(S) -> C,
    pub(super) updated: fn(S) -> U,
    pub(super) deleted: fn(S) -> D,
}

#[async_trait]
impl<S, C, U, D> SnapshotEvents for Snapshots<S, C, U, D>
where
    S: serde::de::DeserializeOwned + Send + Sync + 'static,
    C: isp_events::EventPayload + Send + Sync + 'static,
    U: isp_events::EventPayload + Send + Sync + 'static,
    D: isp_events::EventPayload + Send + Sync + 'static,
{
    async fn changed(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        publish_change(tx, ctx, doc, previous, self.created, self.updated).await
    }
    async fn deleted(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()> {
        publish_doc(tx, ctx, doc, self.deleted).await
    }
}

/// `publish_doc` with the created or updated wrapper, as `after_change` needs.
pub async fn publish_change<S, C, U>(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    doc: &Value,
    previous: Option<&Value>,
    created: impl FnOnce(S) -> C,
    updated: impl FnOnce(S) -> U,
) -> ApiResult<()>
where
    S: serde::de::DeserializeOwned,
    C: isp_events::EventPayload,
    U: isp_events::EventPayload,
{
    match previous {
        None => publish_doc(tx, ctx, doc, created).await,
        Some(_) => publish_doc(tx, ctx, doc, updated).await,
    }
}
