//! The outbox relay: Postgres `outbox` -> JetStream, at least once, in order.
//!
//! Each pass locks up to `batch_size` unpublished rows (oldest first) with
//! `FOR UPDATE SKIP LOCKED`, publishes them all (pipelined on the one connection,
//! so they reach the stream in that order), waits for every PubAck, and marks the
//! acknowledged rows published in the same transaction that holds the locks. A
//! second relay replica skips the locked rows and takes the next ones, so no row
//! is ever in flight twice at once. A row whose publish failed keeps its lock
//! until that transaction ends and is retried by whichever relay gets it next;
//! a re-publish of an event JetStream already stored (PubAck lost, crash before
//! commit) carries the same `Nats-Msg-Id` and is dropped as a duplicate.

use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, context::Publish};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::envelope::TRACEPARENT_HEADER;

/// Tuning of the relay; `Default` is what services use.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per publish pass.
    pub batch_size: i64,
    /// Poll interval when no NOTIFY arrives (a lost notification, or LISTEN down).
    pub poll_interval: Duration,
    /// First retry delay after a failed pass; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How often to prune.
    pub prune_every: Duration,
    /// How often to measure the backlog for the `isp_outbox_pending` gauges.
    pub measure_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
            measure_every: Duration::from_secs(5),
        }
    }
}

/// Starts the relay for the outbox in `pool`'s schema with default settings.
/// `js` should come from [`crate::connect_nats`] (so it need not be connected
/// yet); the relay declares the stream itself. Ends when `shutdown` is cancelled
/// (an in-flight batch is finished first) or the pool is closed.
pub fn spawn_relay(
    pool: PgPool,
    js: jetstream::Context,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_relay_with(pool, js, RelayConfig::default(), shutdown)
}

/// [`spawn_relay`] with explicit settings.
pub fn spawn_relay_with(
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(pool, js, config, shutdown))
}

async fn run(pool: PgPool, js: jetstream::Context, cfg: RelayConfig, shutdown: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    let mut stream_ready = false;
    let mut last_prune: Option<Instant> = None;
    let mut last_gauge: Option<Instant> = None;
    // Metrics are labelled with the schema (= the service) the relay drains.
    let schema: String = loop {
        match sqlx::query_scalar::<_, String>("SELECT current_schema()")
            .fetch_one(&pool)
            .await
        {
            Ok(s) => break s,
            Err(_) if shutdown.is_cancelled() || pool.is_closed() => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "outbox relay: database unavailable");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    backoff.reset();
    tracing::debug!("outbox relay started");

    while !shutdown.is_cancelled() && !pool.is_closed() {
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        if last_prune.is_none_or(|t| t.elapsed() >= cfg.prune_every) {
            last_prune = Some(Instant::now());
            match prune(&pool, cfg.retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned published outbox rows"),
                Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
            }
        }

        // What is still waiting (NATS down, or a backlog): the operator's view of
        // "no event is lost, some are late".
        if last_gauge.is_none_or(|t| t.elapsed() >= cfg.measure_every) {
            last_gauge = Some(Instant::now());
            record_backlog(&pool, &schema).await;
        }

        let pass = async {
            if !stream_ready {
                crate::bus::ensure_stream(&js).await?;
                stream_ready = true;
            }
            drain_batch(&pool, &js, cfg.batch_size).await
        };
        match pass.await {
            Ok(Pass {
                published,
                failed: None,
                locked,
            }) => {
                backoff.reset();
                if published > 0 {
                    tracing::debug!(published, "published outbox events");
                    metrics::counter!("isp_outbox_published_total", "schema" => schema.clone())
                        .increment(published as u64);
                }
                if locked as i64 >= cfg.batch_size {
                    continue; // more waiting: no pause
                }
            }
            Ok(Pass {
                failed: Some(err),
                published,
                ..
            }) => {
                metrics::counter!("isp_outbox_publish_failures_total", "schema" => schema.clone())
                    .increment(1);
                stream_ready = false;
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, published, retry_in = ?delay, "outbox relay: publishing failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            Err(err) => {
                // The stream may have been deleted, or NATS restarted without it.
                stream_ready = false;
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "outbox relay pass failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        }

        // Idle: wait for a NOTIFY (sent at commit of an outbox insert), the poll
        // interval, or shutdown.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            res = async { listener.as_mut().expect("checked").try_recv().await }, if listener.is_some() => {
                match res {
                    // Many inserts, one pass: swallow what else is queued.
                    Ok(Some(_)) => while listener.as_mut().and_then(|l| l.next_buffered()).is_some() {},
                    // Reconnected: notifications may have been missed; the pass runs anyway.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox LISTEN connection lost; polling");
                        listener = None;
                    }
                }
            }
        }
    }
    tracing::debug!("outbox relay stopped");
}

/// Gauges of the unpublished rows: how many, and the age of the oldest.
async fn record_backlog(pool: &PgPool, schema: &str) {
    let row: sqlx::Result<(i64, Option<f64>)> = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await;
    if let Ok((pending, oldest)) = row {
        metrics::gauge!("isp_outbox_pending", "schema" => schema.to_string()).set(pending as f64);
        metrics::gauge!("isp_outbox_oldest_pending_seconds", "schema" => schema.to_string())
            .set(oldest.unwrap_or(0.0));
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let attempt = async {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen("outbox").await?;
        Ok::<_, sqlx::Error>(l)
    };
    match attempt.await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!(error = %e, "cannot LISTEN outbox; polling");
            None
        }
    }
}

struct Pass {
    /// Rows locked in this pass.
    locked: usize,
    published: usize,
    /// The first publish error, if any row failed.
    failed: Option<anyhow::Error>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    subject: String,
    payload: sqlx::types::Json<serde_json::Value>,
    traceparent: Option<String>,
}

async fn drain_batch(pool: &PgPool, js: &jetstream::Context, limit: i64) -> anyhow::Result<Pass> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, subject, payload, traceparent FROM outbox
         WHERE published_at IS NULL
         ORDER BY created_at, id
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Pass {
            locked: 0,
            published: 0,
            failed: None,
        });
    }

    // Send every publish first, then await the acks together: one round trip per
    // batch instead of per event, and the acks' timeouts run concurrently.
    let mut acks = Vec::with_capacity(rows.len());
    for row in &rows {
        let body = serde_json::to_vec(&row.payload.0)?;
        let mut publish = Publish::build().payload(body.into());
        if let Some(tp) = row
            .traceparent
            .as_deref()
            .filter(|t| crate::trace::is_valid_traceparent(t))
        {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT_HEADER, tp);
            publish = publish.headers(headers);
        }
        // After `headers`, which replaces the whole map.
        publish = publish.message_id(row.id.to_string());
        match js.send_publish(row.subject.clone(), publish).await {
            Ok(ack) => acks.push((row.id, Some(ack))),
            Err(e) => {
                // Not sent; record it and skip the rest of the batch.
                acks.push((row.id, None));
                tracing::debug!(error = %e, id = %row.id, "publish not sent");
                break;
            }
        }
    }
    let results = futures::future::join_all(acks.into_iter().map(|(id, ack)| async move {
        match ack {
            Some(ack) => (
                id,
                ack.await
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("publish to JetStream: {e}")),
            ),
            None => (id, Err(anyhow::anyhow!("publish to JetStream: not sent"))),
        }
    }))
    .await;

    let mut ok_ids = Vec::new();
    let mut failed_ids = Vec::new();
    let mut first_error: Option<anyhow::Error> = None;
    for (id, res) in results {
        match res {
            Ok(()) => ok_ids.push(id),
            Err(e) => {
                failed_ids.push(id);
                first_error.get_or_insert(e);
            }
        }
    }

    if !ok_ids.is_empty() {
        sqlx::query("UPDATE outbox SET published_at = now(), last_error = NULL WHERE id = ANY($1)")
            .bind(&ok_ids)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(err) = &first_error {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)",
        )
        .bind(&failed_ids)
        .bind(format!("{err:#}"))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Pass {
        locked: rows.len(),
        published: ok_ids.len(),
        failed: first_error,
    })
}

async fn prune(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL
         AND published_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
