//! The event backbone: one contract for every service's events, and the
//! machinery that moves them from one service's Postgres schema to another's
//! over NATS JetStream without losing or double-applying any.
//!
//! - [`CloudEvent`] (`envelope`): the CloudEvents 1.0 JSON envelope every event
//!   travels in. The W3C `traceparent` rides along as a NATS header.
//! - [`payloads`]: the typed `data` of every event type, each implementing
//!   [`EventPayload`] (its `type`, its producing service, and so its subject
//!   `isp.<service>.<type>`).
//! - [`outbox`]: producers call [`outbox::enqueue`] inside the transaction that
//!   changes their state, so the event exists if and only if the change committed.
//! - [`relay`]: a background task per service that drains the outbox in
//!   creation order and publishes to JetStream with `Nats-Msg-Id` = event id,
//!   marking a row published only after the PubAck.
//! - [`consumer`]: durable pull consumers whose handler runs in one Postgres
//!   transaction together with the insert of the event id into
//!   `processed_events`; the message is acked only after that commit.
//! - [`bus`]: connecting to NATS (retrying forever, also on the first connect) and
//!   declaring the `ISP` stream.
//! - [`trace`]: the HTTP layer runs each request inside
//!   [`trace::with_traceparent`]; `enqueue` stores that `traceparent` with the
//!   event, the relay sends it as a NATS header, and the consumer runs its handler
//!   inside the event's trace context, so events caused by events stay in the
//!   same trace.
//!
//! # Guarantees
//!
//! * **No lost events.** The event row commits atomically with the state change.
//!   A crash before the PubAck leaves the row unpublished and it is sent again;
//!   a NATS outage only delays events (writes keep working; the relay backs off
//!   and retries, and resumes when NATS returns).
//! * **At-least-once delivery, exactly-once effect.** A republish inside the
//!   stream's 2-minute duplicate window is dropped by JetStream (`Nats-Msg-Id`);
//!   anything that still arrives twice (a republish after the window, a
//!   redelivery after a crash between commit and ack, two replicas racing on an
//!   ack-wait expiry) hits the `processed_events` primary key and is acked
//!   without running the handler again. Handlers must do all their work through
//!   the connection they are given and nothing else non-transactional (an HTTP
//!   call or SMS send must itself be idempotent or be queued in the same
//!   transaction).
//! * **Replicas.** Relays lock outbox rows with `FOR UPDATE SKIP LOCKED`, so two
//!   replicas never publish the same row at the same time. Consumer replicas
//!   pull from the same durable consumer and share the work.
//! * **Convergence from scratch.** A consumer whose `processed_events` has no row
//!   for its name (a fresh schema) deletes and recreates its durable consumer
//!   with `DeliverPolicy::All`, replaying the stream. The stream keeps events
//!   forever (limits retention, no age limit): it is the replay log that rebuilds
//!   projections.
//! * **Ordering.** Events of one producer are published in creation order, but
//!   after a failure a retried event can land after a later one, and handlers
//!   can see redeliveries out of order. Projections write through
//!   [`projection::Projection`], which ignores snapshots older than what they
//!   hold and never lets anything bring back a deleted entity.
//!
//! # Migrations
//!
//! The tables live in `migrations/` ([`MIGRATOR`], versions `00000000000001`,
//! `...02`, ..., below any service's) and are created
//! unqualified, i.e. in the first schema of the connection's `search_path`.
//! Services keep their own migrators (versions `2026...`) in the same
//! `_sqlx_migrations` table of their schema. Each migrator alone would reject the
//! other's applied versions as "missing", so services call [`migrate`], which runs
//! both as one set with `ignore_missing`:
//!
//! ```ignore
//! static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/billing");
//! isp_events::migrate(&pool, &MIGRATOR).await?;
//! ```
//!
//! # Wiring a service
//!
//! ```ignore
//! let bus = isp_events::Bus::connect(&nats_url).await?; // returns at once even if NATS is down
//! let relay = isp_events::spawn_relay(pool.clone(), bus.js.clone(), shutdown.clone());
//! let consumer = isp_events::spawn_consumer(
//!     pool.clone(),
//!     bus.js.clone(),
//!     ConsumerSpec::new("billing-projections", "isp.core.>"),
//!     CoreEvents, // impl EventHandler: an `async fn handle(&self, tx, ev)`
//!     shutdown.clone(),
//! );
//! // producing, in a request handler:
//! let mut tx = pool.begin().await?;
//! /* ... state change ... */
//! isp_events::outbox::enqueue(&mut tx, "core", &PlanUpdated(snapshot)).await?;
//! tx.commit().await?;
//! ```

pub mod bus;
pub mod consumer;
pub mod envelope;
pub mod options;
pub mod outbox;
pub mod payloads;
pub mod projection;
pub mod relay;
pub mod trace;

mod backoff;

pub use bus::{connect_nats, ensure_stream, Bus, STREAM_NAME, STREAM_SUBJECTS};
pub use consumer::{handler_fn, spawn_consumer, ConsumerSpec, EventHandler, FnHandler};
pub use envelope::CloudEvent;
pub use outbox::{migrate, MIGRATOR};
pub use payloads::EventPayload;
pub use projection::{entity_change, Change, Entity, Lifecycle, Projection};
pub use relay::{spawn_relay, RelayConfig};

pub use async_nats;
/// Re-exported so users need not depend on these crates (and get the same
/// versions): handlers name `BoxFuture`, callers pass a `CancellationToken`, tests
/// publish raw messages with `async_nats`.
pub use futures::future::BoxFuture;
pub use tokio_util::sync::CancellationToken;
