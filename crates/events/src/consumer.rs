//! Idempotent durable consumers: JetStream -> handler -> Postgres, exactly once
//! in effect.
//!
//! For each message: begin a transaction, insert `(consumer, event id)` into
//! `processed_events` (`ON CONFLICT DO NOTHING`); if the row already existed the
//! event was applied before, so commit and ack; otherwise run the handler inside
//! the same transaction, commit, then ack. A handler error rolls everything back
//! and naks with a delay growing with the delivery count, so a poison event
//! retries slowly instead of spinning (and never blocks others: JetStream keeps
//! delivering the rest). Two replicas racing on the same event serialize on the
//! primary key: the second waits for the first's commit, then sees the row.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::AckKind};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::{exponential, Backoff};
use crate::bus::STREAM_NAME;
use crate::envelope::{CloudEvent, TRACEPARENT_HEADER};

/// Which events a consumer wants, under which durable name, and how many it may
/// apply at once.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable consumer name, also the `consumer` key in `processed_events`;
    /// e.g. `billing-projections`. Letters, digits, `-` and `_` only.
    pub durable: String,
    /// e.g. `isp.core.>` or `isp.>` (NATS 2.9: one filter per consumer).
    pub filter_subject: String,
    /// Events applied at once, each in its own transaction (1: one after the
    /// other, in stream order).
    pub lanes: usize,
    /// With several lanes, events with the same key are still applied one after
    /// the other, in stream order; events with different keys may overtake each
    /// other. `None`: no ordering needed. Default: the event's `subject`. (An
    /// event that fails is retried later and holds back nothing, its key's
    /// events included, with one lane as with several.)
    pub key: fn(&CloudEvent) -> Option<String>,
}

impl ConsumerSpec {
    pub fn new(durable: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        Self {
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            lanes: 1,
            key: |ev| ev.subject.clone(),
        }
    }

    /// Up to `lanes` events in flight, ordered per `key`. For handlers whose
    /// events on different keys commute (e.g. payments of different accounts):
    /// a serial consumer's throughput is one transaction's round trips.
    pub fn lanes(mut self, lanes: usize, key: fn(&CloudEvent) -> Option<String>) -> Self {
        self.lanes = lanes.max(1);
        self.key = key;
        self
    }
}

/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages requested per pull.
const PULL_BATCH: usize = 32;
/// How long a pull request waits for messages. Short, so a pull lost in a NATS
/// restart is replaced quickly (the client waits this plus 5 s before giving up
/// on a request the server forgot).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Nak delay for a failing handler: 1 s, 2 s, 4 s, ... capped.
const NAK_BASE: Duration = Duration::from_secs(1);
const NAK_MAX: Duration = Duration::from_secs(60);
/// Deliveries after which a failing event is reported as stuck (error log,
/// `isp_events_stuck_total`): about two minutes of retries.
const STUCK_AFTER: i64 = 8;

/// What a consumer does with one event, inside the transaction that also records
/// the event as processed. Return `Ok(())` for event types it does not care about.
/// Everything it changes must go through `tx`.
///
/// Implement it with a plain `async fn` (no boxing); projections dispatch with
/// [`crate::projection::entity_change`] and write through a
/// [`crate::projection::Projection`]:
///
/// ```ignore
/// impl EventHandler for CoreEvents {
///     async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
///         if let Some(plan) = entity_change::<PlanSnapshot>(ev)? {
///             PLANS.upsert(tx, &plan, |row, p| { row.push_bind(p.name.clone()); }).await?;
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait EventHandler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &mut PgConnection,
        event: &CloudEvent,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl<H: EventHandler> EventHandler for Arc<H> {
    async fn handle(&self, tx: &mut PgConnection, event: &CloudEvent) -> anyhow::Result<()> {
        (**self).handle(tx, event).await
    }
}

/// A handler made from a closure; build it with [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps a closure as an [`EventHandler`] (tests and one-off consumers; a
/// service's consumers are types implementing the trait). Passing the closure
/// straight to this function is what lets the compiler infer its higher-ranked
/// signature:
///
/// ```ignore
/// handler_fn(|tx, ev| Box::pin(async move {
///     if let Some(p) = ev.payload::<PlanUpdated>()? {
///         sqlx::query("...").bind(p.id).execute(&mut *tx).await?;
///     }
///     Ok(())
/// }))
/// ```
pub fn handler_fn<F>(f: F) -> FnHandler<F>
where
    F: for<'a> Fn(&'a mut PgConnection, &'a CloudEvent) -> BoxFuture<'a, anyhow::Result<()>>
        + Send
        + Sync
        + 'static,
{
    FnHandler(f)
}

impl<F> EventHandler for FnHandler<F>
where
    F: for<'a> Fn(&'a mut PgConnection, &'a CloudEvent) -> BoxFuture<'a, anyhow::Result<()>>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, tx: &mut PgConnection, event: &CloudEvent) -> anyhow::Result<()> {
        (self.0)(tx, event).await
    }
}

/// Runs a durable pull consumer until `shutdown` (the message in hand is finished
/// first). Keeps retrying while NATS or Postgres is unavailable; declares the
/// stream if needed. On a schema with no `processed_events` row for
/// `spec.durable` it recreates the durable consumer from the start of the stream
/// (once per start), so a fresh service replays history into its projections.
pub fn spawn_consumer<H: EventHandler>(
    pool: PgPool,
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let span = tracing::info_span!("consumer", durable = %spec.durable);
    tokio::spawn(run(pool, js, spec, handler, shutdown).instrument(span))
}

async fn run<H: EventHandler>(
    pool: PgPool,
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) {
    // Capped low: pulling is cheap, and a consumer should resume within seconds of
    // NATS coming back.
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    // Only the first successful setup may reset the consumer: two replicas that
    // both start on an empty schema would otherwise keep deleting each other's.
    let mut may_reset = true;

    'setup: while !shutdown.is_cancelled() && !pool.is_closed() {
        let setup = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = prepare(&pool, &js, &spec, may_reset) => r,
        };
        let consumer = match setup {
            Ok(c) => {
                may_reset = false;
                c
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "consumer setup failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };

        // In flight: each future answers its message's key; messages whose key is
        // in flight wait behind it, so one key's events stay in stream order.
        let mut running = FuturesUnordered::new();
        let mut waiting: HashMap<String, VecDeque<Delivery>> = HashMap::new();
        let mut queued = 0usize;
        let mut batch: Option<jetstream::consumer::pull::Batch> = None;
        // A pull request is never dropped half-sent (its messages would wait out
        // the ack wait): it is kept across the loop's turns until it answers.
        let mut pulling: Option<BoxFuture<'_, Result<_, _>>> = None;
        let outcome: Flow = loop {
            let room = running.len() + queued < spec.lanes;
            if room && batch.is_none() && pulling.is_none() {
                pulling = Some(Box::pin(pull(&consumer)));
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Flow::Stop,
                Some(key) = running.next(), if !running.is_empty() => {
                    if let Some(key) = key {
                        let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                        match next {
                            Some(d) => {
                                queued -= 1;
                                running.push(apply_message(&pool, &spec, &handler, Some(key), d));
                            }
                            None => {
                                waiting.remove(&key);
                            }
                        }
                    }
                }
                pulled = async {
                    match pulling.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if pulling.is_some() => match pulled {
                    Ok(b) => {
                        pulling = None;
                        batch = Some(b);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pull request failed");
                        break Flow::Retry;
                    }
                },
                next = async {
                    match batch.as_mut() {
                        Some(b) => b.next().await,
                        None => std::future::pending().await,
                    }
                }, if room && batch.is_some() => {
                    match next {
                        None => batch = None, // batch done or expired: pull again
                        Some(Ok(msg)) => {
                            backoff.reset();
                            let d = Delivery::new(msg);
                            let key = key_of(&spec, &d);
                            match key.as_ref().and_then(|k| waiting.get_mut(k)) {
                                Some(line) => {
                                    line.push_back(d);
                                    queued += 1;
                                }
                                None => {
                                    if let Some(k) = &key {
                                        waiting.insert(k.clone(), VecDeque::new());
                                    }
                                    running.push(apply_message(&pool, &spec, &handler, key, d));
                                }
                            }
                        }
                        Some(Err(e)) => {
                            // e.g. the consumer was deleted or NATS restarted: set up again.
                            tracing::warn!(error = %e, "pull failed");
                            break Flow::Retry;
                        }
                    }
                }
            }
        };
        // What is in hand is finished, not abandoned; what waits is handed back
        // for redelivery now rather than after the ack wait.
        while running.next().await.is_some() {}
        for d in waiting.into_values().flatten() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), d.msg.ack_with(AckKind::Nak(None)))
                    .await;
        }
        match outcome {
            Flow::Stop => break 'setup,
            Flow::Retry => {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => break 'setup,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!("consumer stopped");
}

enum Flow {
    Stop,
    Retry,
}

async fn pull(
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<jetstream::consumer::pull::Batch, async_nats::jetstream::consumer::pull::BatchError> {
    consumer
        .batch()
        .max_messages(PULL_BATCH)
        .expires(PULL_EXPIRES)
        .messages()
        .await
}

/// The ordering key of a message (none for one that is not a CloudEvent: it is
/// terminated without touching the database).
fn key_of(spec: &ConsumerSpec, d: &Delivery) -> Option<String> {
    if spec.lanes == 1 {
        return Some(String::new());
    }
    d.event.as_ref().ok().and_then(spec.key)
}

/// A message and its CloudEvent, read once when it arrives.
struct Delivery {
    msg: jetstream::Message,
    event: anyhow::Result<CloudEvent>,
}

impl Delivery {
    fn new(msg: jetstream::Message) -> Self {
        let event = CloudEvent::from_json(&msg.payload);
        Self { msg, event }
    }
}

async fn apply_message<'a, H: EventHandler>(
    pool: &'a PgPool,
    spec: &'a ConsumerSpec,
    handler: &'a H,
    key: Option<String>,
    d: Delivery,
) -> Option<String> {
    process(pool, &spec.durable, handler, d).await;
    key
}

fn desired_config(spec: &ConsumerSpec) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(format!(
            "isp-events consumer {} on {}",
            spec.durable, spec.filter_subject
        )),
        filter_subject: spec.filter_subject.clone(),
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // max_deliver left at the server default: unlimited.
        ..Default::default()
    }
}

/// Gets the durable consumer, creating it (from the start of the stream) if it
/// is missing or its filter changed, or resetting it on a fresh schema.
async fn prepare(
    pool: &PgPool,
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    may_reset: bool,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    crate::bus::ensure_stream(js).await?;

    let fresh = may_reset && {
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1)",
        )
        .bind(&spec.durable)
        .fetch_one(pool)
        .await?;
        !any
    };

    let existing = match js
        .get_consumer_from_stream::<pull::Config, _, _>(&spec.durable, STREAM_NAME)
        .await
    {
        Ok(c) => Some(c),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(anyhow::anyhow!("looking up consumer {}: {e}", spec.durable)),
    };

    if let Some(consumer) = existing {
        let cfg = &consumer.cached_info().config;
        let compatible = cfg.filter_subject == spec.filter_subject
            && cfg.ack_policy == jetstream::consumer::AckPolicy::Explicit;
        if compatible && !fresh {
            return Ok(consumer);
        }
        tracing::info!(
            fresh,
            compatible,
            "recreating durable consumer to replay the stream from the start"
        );
        match js
            .delete_consumer_from_stream(&spec.durable, STREAM_NAME)
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(anyhow::anyhow!("deleting consumer {}: {e}", spec.durable)),
        }
    }

    js.create_consumer_on_stream(desired_config(spec), STREAM_NAME)
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {}: {e}", spec.durable))
}

fn is_not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::stream::ConsumerErrorKind::JetStream(err)
            if err.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

async fn process<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    Delivery { msg, event }: Delivery,
) {
    let mut event = match event {
        Ok(ev) => ev,
        Err(e) => {
            // Redelivering it would not make it parse: drop it for good.
            tracing::error!(subject = %msg.subject, error = %e, "not a CloudEvent; terminating delivery");
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "term failed");
            }
            return;
        }
    };
    event.traceparent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(TRACEPARENT_HEADER))
        .map(|v| v.as_str().to_string())
        .filter(|t| crate::trace::is_valid_traceparent(t));
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);

    let span = tracing::info_span!("event", id = %event.id, r#type = %event.r#type, delivered);
    let traceparent = event.traceparent.clone();
    // A panicking handler is a failed attempt like any other, not a dead consumer.
    let attempt = AssertUnwindSafe(crate::trace::with_traceparent(
        traceparent,
        apply(pool, consumer, handler, &event),
    ))
    .catch_unwind()
    .instrument(span.clone());
    let outcome = match attempt.await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("event handler panicked")),
    };

    let _enter = span.enter();
    let result = match &outcome {
        Ok(true) => "applied",
        Ok(false) => "duplicate",
        Err(_) => "failed",
    };
    metrics::counter!("isp_events_consumed_total", "consumer" => consumer.to_string(), "result" => result)
        .increment(1);
    match outcome {
        Ok(applied) => {
            if !applied {
                tracing::debug!("already processed; acking");
            }
            // Only a redelivery can have failed before: the first delivery's
            // success costs no extra statement.
            if delivered > 1 {
                if let Err(e) = failing::clear(pool, consumer, event.id).await {
                    tracing::warn!(error = %format!("{e:#}"), "clearing the failing-event row failed");
                }
            }
            if let Err(e) = msg.ack().await {
                // The effect is committed; a redelivery will be a no-op.
                tracing::warn!(error = %e, "ack failed");
            }
        }
        Err(e) => {
            if let Err(e2) = failing::record(pool, consumer, &event, delivered, &e).await {
                // Often the same cause (the database is down): the log and the
                // metrics still tell.
                tracing::warn!(error = %format!("{e2:#}"), "recording the failing event failed");
            }
            let delay = exponential(
                NAK_BASE,
                u32::try_from(delivered).unwrap_or(u32::MAX),
                NAK_MAX,
            );
            if delivered >= STUCK_AFTER {
                // Past a few retries it will not heal by itself (an event this
                // consumer cannot read, a bug): an error for whoever watches logs,
                // and a metric to alert on. It keeps being retried, never dropped.
                metrics::counter!("isp_events_stuck_total", "consumer" => consumer.to_string(), "type" => event.r#type.clone())
                    .increment(1);
                tracing::error!(error = %format!("{e:#}"), retry_in = ?delay, "event handler keeps failing; will redeliver");
            } else {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "event handler failed; will redeliver");
            }
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "nak failed (redelivered after ack wait)");
            }
        }
    }
}

/// Applies `event` through `handler` at most once per `consumer`, in one
/// transaction with its `processed_events` row. Ok(true): applied now; Ok(false):
/// was already applied (by this or another replica). Public so that the replica
/// race can be tested directly.
pub async fn apply<H: EventHandler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    event: &CloudEvent,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    handler.handle(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// The `failing_events` rows: what an Admin sees of events a consumer keeps
/// failing on (the shared migration 4 says what the table is).
mod failing {
    use sqlx::PgPool;
    use uuid::Uuid;

    use crate::CloudEvent;

    /// Long enough for any error chain worth reading; a row stays small.
    const MAX_ERROR_CHARS: usize = 2000;

    pub async fn record(
        pool: &PgPool,
        consumer: &str,
        event: &CloudEvent,
        delivered: i64,
        error: &anyhow::Error,
    ) -> sqlx::Result<()> {
        let text: String = format!("{error:#}").chars().take(MAX_ERROR_CHARS).collect();
        sqlx::query(
            "INSERT INTO failing_events (id, consumer, event_id, type, source, subject, deliveries, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (consumer, event_id) DO UPDATE
                SET deliveries = GREATEST(failing_events.deliveries, EXCLUDED.deliveries),
                    last_error = EXCLUDED.last_error, updated_at = now()",
        )
        .bind(Uuid::now_v7())
        .bind(consumer)
        .bind(event.id)
        .bind(&event.r#type)
        .bind(&event.source)
        .bind(&event.subject)
        .bind(delivered.max(1))
        .bind(text)
        .execute(pool)
        .await?;
        Ok(())
    }

    pub async fn clear(pool: &PgPool, consumer: &str, event: Uuid) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM failing_events WHERE consumer = $1 AND event_id = $2 AND skipped_at IS NULL")
            .bind(consumer)
            .bind(event)
            .execute(pool)
            .await?;
        Ok(())
    }
}
