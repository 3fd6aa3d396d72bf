//! The transactional outbox: producers write events next to their state change.

use std::borrow::Cow;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::envelope::CloudEvent;
use crate::payloads::EventPayload;

/// The shared tables (`outbox`, `processed_events`, ...), migration versions
/// `00000000000001` and up, below every service's own. Run it
/// through [`migrate`] together with the service's own migrator.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Runs the event tables' migration and `service`'s migrations as one ordered
/// set, in the schema the pool's `search_path` names first (created if it does
/// not exist yet).
///
/// Both sets share that schema's `_sqlx_migrations` table, so each alone would
/// see the other's applied versions as missing; merging them with
/// `ignore_missing` keeps checksum checking for every migration we know and
/// tolerates versions applied by a newer release during a rolling upgrade.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    ensure_current_schema(&mut conn).await?;

    let mut migrations: Vec<_> = MIGRATOR.migrations.iter().cloned().collect();
    for m in service.migrations.iter() {
        anyhow::ensure!(
            !MIGRATOR
                .migrations
                .iter()
                .any(|ours| ours.version == m.version),
            "service migration version {} collides with isp-events' own",
            m.version
        );
        migrations.push(m.clone());
    }
    migrations.sort_by_key(|m| m.version);

    let merged = Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: true,
        locking: true,
        no_tx: false,
    };
    merged.run(&mut *conn).await.context("running migrations")?;
    Ok(())
}

/// `CREATE SCHEMA IF NOT EXISTS` the first `search_path` entry when Postgres
/// reports no current schema, so a service can start on an empty database.
async fn ensure_current_schema(conn: &mut PgConnection) -> anyhow::Result<()> {
    let current: Option<String> = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *conn)
        .await?;
    if current.is_some() {
        return Ok(());
    }
    let search_path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *conn)
        .await?;
    let first = search_path
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .find(|s| !s.is_empty() && *s != "$user")
        .context("search_path names no schema")?;
    let quoted = format!("\"{}\"", first.replace('"', "\"\""));
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("creating schema {quoted}"))?;
    Ok(())
}

/// Writes `payload` as a new [`CloudEvent`] from `source_service` (e.g.
/// `"billing"`) into the outbox, within the caller's transaction: pass
/// `&mut tx` (or `&mut *tx`). The relay publishes it after commit; on rollback it
/// never existed. The current task's trace context (see [`crate::trace`]) goes
/// with it. Returns the event id.
pub async fn enqueue<P: EventPayload>(
    conn: &mut PgConnection,
    source_service: &str,
    payload: &P,
) -> anyhow::Result<Uuid> {
    let event = CloudEvent::new(source_service, payload)
        .with_context(|| format!("serializing {} event", P::TYPE))?;
    enqueue_event(conn, &P::nats_subject(), &event).await?;
    Ok(event.id)
}

/// Writes an already built event for publication on `nats_subject`.
pub async fn enqueue_event(
    conn: &mut PgConnection,
    nats_subject: &str,
    event: &CloudEvent,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        nats_subject.starts_with("isp.") && !nats_subject.contains(['*', '>', ' ']),
        "invalid event subject {nats_subject:?}"
    );
    sqlx::query(
        "INSERT INTO outbox (id, subject, type, payload, traceparent) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event.id)
    .bind(nats_subject)
    .bind(&event.r#type)
    .bind(sqlx::types::Json(event))
    .bind(&event.traceparent)
    .execute(conn)
    .await
    .context("inserting into outbox")?;
    Ok(())
}

/// [`enqueue`] for many events of one type in one statement: a bulk send queues
/// thousands of requests, and one `INSERT ... SELECT FROM UNNEST` costs about what
/// one row does. Returns the event ids, in order.
pub async fn enqueue_batch<P: EventPayload>(
    conn: &mut PgConnection,
    source_service: &str,
    payloads: &[P],
) -> anyhow::Result<Vec<Uuid>> {
    let subject = P::nats_subject();
    let (mut ids, mut bodies, mut traces) = (vec![], vec![], vec![]);
    for p in payloads {
        let event = CloudEvent::new(source_service, p)
            .with_context(|| format!("serializing {} event", P::TYPE))?;
        ids.push(event.id);
        traces.push(event.traceparent.clone());
        bodies.push(serde_json::to_value(&event)?);
    }
    sqlx::query(
        "INSERT INTO outbox (id, subject, type, payload, traceparent)
         SELECT id, $2, $3, payload, traceparent
         FROM UNNEST($1::uuid[], $4::jsonb[], $5::text[]) AS t(id, payload, traceparent)",
    )
    .bind(&ids)
    .bind(&subject)
    .bind(P::TYPE)
    .bind(&bodies)
    .bind(&traces)
    .execute(conn)
    .await
    .context("inserting into outbox")?;
    Ok(ids)
}
