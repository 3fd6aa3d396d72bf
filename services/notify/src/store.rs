//! The delivery state machine. Every change goes through [`advance`], which moves
//! a delivery only forwards ([`DeliveryStatus::rank`]) and publishes
//! `notification.status` in the same transaction.

use chrono::Utc;
use isp_events::outbox::enqueue;
use isp_events::payloads::{
    DeliveryStatus, NotificationChannel, NotificationStatus, SuppressionAdded, SuppressionChange,
    SuppressionRemoved,
};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

pub const SERVICE: &str = "notify";
/// `pg_notify` channel that wakes the send workers when a delivery is due.
pub const WAKE_CHANNEL: &str = "notify_deliveries";

/// What a status change sets besides the status (absent fields keep their value).
#[derive(Debug, Default, Clone)]
pub struct Change<'a> {
    pub provider: Option<&'a str>,
    pub provider_message_id: Option<&'a str>,
    pub cost: Option<Decimal>,
    pub cost_currency: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
}

#[derive(sqlx::FromRow)]
struct Current {
    status: DeliveryStatus,
    requester: String,
    reference: Option<String>,
    channel: NotificationChannel,
    recipient: String,
    provider: String,
    provider_message_id: Option<String>,
    cost: Option<Decimal>,
    cost_currency: Option<String>,
    failure_reason: Option<String>,
}

/// Moves delivery `id` to `status` if that is progress, records `change`, ends any
/// pending attempt when the status leaves Queued, and publishes
/// `notification.status`. Returns whether anything changed (false: unknown id,
/// or a status that is not ahead of the current one).
pub async fn advance(
    tx: &mut PgConnection,
    id: Uuid,
    status: DeliveryStatus,
    change: Change<'_>,
) -> anyhow::Result<bool> {
    let cur: Option<Current> = sqlx::query_as(
        "SELECT status, requester, reference, channel, recipient, provider, provider_message_id, \
                cost, cost_currency, failure_reason \
         FROM deliveries WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(cur) = cur else { return Ok(false) };
    let from = cur.status;
    if status.rank() <= from.rank() {
        return Ok(false);
    }
    let provider = change.provider.map(str::to_string).unwrap_or(cur.provider);
    let pmid = change
        .provider_message_id
        .map(str::to_string)
        .or(cur.provider_message_id);
    let cost = change.cost.or(cur.cost);
    let cost_currency = change
        .cost_currency
        .map(str::to_string)
        .or(cur.cost_currency);
    let failure_reason = change
        .failure_reason
        .map(str::to_string)
        .or(cur.failure_reason);
    let at = Utc::now();
    sqlx::query(
        "UPDATE deliveries SET status = $2, provider = $3, provider_message_id = $4, cost = $5, \
                cost_currency = $6, failure_reason = $7, next_attempt_at = NULL, lease_until = NULL, \
                updated_at = $8 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(&provider)
    .bind(&pmid)
    .bind(cost)
    .bind(&cost_currency)
    .bind(&failure_reason)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let ev = NotificationStatus {
        delivery_id: id,
        status,
        provider,
        at,
        requester: Some(cur.requester),
        reference: cur.reference,
        channel: Some(cur.channel),
        recipient: Some(cur.recipient),
        provider_message_id: pmid,
        cost,
        cost_currency,
        failure_reason,
    };
    enqueue(&mut *tx, SERVICE, &ev).await?;
    Ok(true)
}

/// Publishes the status a delivery was created with (Queued, or Failed when
/// refused at once).
pub async fn announce(tx: &mut PgConnection, id: Uuid) -> anyhow::Result<()> {
    let cur: Current = sqlx::query_as(
        "SELECT status, requester, reference, channel, recipient, provider, provider_message_id, \
                cost, cost_currency, failure_reason FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let ev = NotificationStatus {
        delivery_id: id,
        status: cur.status,
        provider: cur.provider,
        at: Utc::now(),
        requester: Some(cur.requester),
        reference: cur.reference,
        channel: Some(cur.channel),
        recipient: Some(cur.recipient),
        provider_message_id: cur.provider_message_id,
        cost: cur.cost,
        cost_currency: cur.cost_currency,
        failure_reason: cur.failure_reason,
    };
    enqueue(&mut *tx, SERVICE, &ev).await?;
    Ok(())
}

/// Serializes everything about one provider message id for the rest of the
/// transaction: the worker recording a send and a report about it. Without it a
/// report could miss the uncommitted send, park itself in `early_reports`, and
/// commit just after the worker looked there: never applied.
pub async fn lock_message(
    tx: &mut PgConnection,
    provider: &str,
    provider_message_id: &str,
) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{provider}:{provider_message_id}"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A provider's report on one of its message ids. Applied to the delivery when
/// we know the id; kept for later when the send is not recorded yet (the report
/// overtook our own commit).
pub async fn report(
    tx: &mut PgConnection,
    provider: &str,
    provider_message_id: &str,
    status: DeliveryStatus,
    failure_reason: Option<&str>,
) -> anyhow::Result<()> {
    lock_message(tx, provider, provider_message_id).await?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE provider = $1 AND provider_message_id = $2",
    )
    .bind(provider)
    .bind(provider_message_id)
    .fetch_optional(&mut *tx)
    .await?;
    match id {
        Some(id) => {
            advance(
                tx,
                id,
                status,
                Change {
                    failure_reason,
                    ..Default::default()
                },
            )
            .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO early_reports (provider, provider_message_id, status, failure_reason) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(provider)
            .bind(provider_message_id)
            .bind(status.as_str())
            .bind(failure_reason)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// Applies reports that arrived before the send of `id` was recorded. The caller
/// holds [`lock_message`] since before it recorded the message id.
pub async fn apply_early_reports(
    tx: &mut PgConnection,
    id: Uuid,
    provider: &str,
    provider_message_id: &str,
) -> anyhow::Result<()> {
    let mut reports: Vec<(DeliveryStatus, Option<String>)> = sqlx::query_as(
        "DELETE FROM early_reports WHERE provider = $1 AND provider_message_id = $2 \
         RETURNING status, failure_reason",
    )
    .bind(provider)
    .bind(provider_message_id)
    .fetch_all(&mut *tx)
    .await?;
    reports.sort_by_key(|(s, _)| s.rank());
    for (status, reason) in reports {
        advance(
            tx,
            id,
            status,
            Change {
                failure_reason: reason.as_deref(),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(())
}

pub async fn is_suppressed(
    tx: &mut PgConnection,
    channel: NotificationChannel,
    recipient: &str,
) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM suppressions WHERE channel = $1 AND recipient = $2)",
    )
    .bind(channel.as_str())
    .bind(recipient)
    .fetch_one(&mut *tx)
    .await?)
}

/// Puts `recipient` on the suppression list; publishes `suppression.added` the
/// first time only.
pub async fn suppress(
    tx: &mut PgConnection,
    channel: NotificationChannel,
    recipient: &str,
    source: &str,
    detail: Option<&str>,
) -> anyhow::Result<bool> {
    let added = sqlx::query(
        "INSERT INTO suppressions (channel, recipient, source, detail) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(channel.as_str())
    .bind(recipient)
    .bind(source)
    .bind(detail)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if added {
        let ev = SuppressionChange {
            recipient: recipient.to_string(),
            channel,
            source: source.to_string(),
            detail: detail.map(str::to_string),
            at: Utc::now(),
        };
        enqueue(&mut *tx, SERVICE, &SuppressionAdded(ev)).await?;
    }
    Ok(added)
}

/// Takes `recipient` off the list (a START reply); publishes
/// `suppression.removed` when it was on it.
pub async fn unsuppress(
    tx: &mut PgConnection,
    channel: NotificationChannel,
    recipient: &str,
    source: &str,
    detail: Option<&str>,
) -> anyhow::Result<bool> {
    let removed = sqlx::query("DELETE FROM suppressions WHERE channel = $1 AND recipient = $2")
        .bind(channel.as_str())
        .bind(recipient)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if removed {
        let ev = SuppressionChange {
            recipient: recipient.to_string(),
            channel,
            source: source.to_string(),
            detail: detail.map(str::to_string),
            at: Utc::now(),
        };
        enqueue(&mut *tx, SERVICE, &SuppressionRemoved(ev)).await?;
    }
    Ok(removed)
}
