//! The consumer of every service's `notification.requested.*` events: one
//! delivery row per request id (a redelivered or re-published request finds it
//! and does nothing), Queued for the send worker unless it is refused at once.

use isp_events::payloads::{
    notification_request, NotificationCategory, NotificationChannel, NotificationRequest,
};
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use sqlx::PgConnection;

use crate::store::{self, WAKE_CHANNEL};

pub const DURABLE: &str = "notify-requests";

pub struct Requests;

impl EventHandler for Requests {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match notification_request(event) {
                Ok(Some((requester, req))) => accept(tx, &requester, req).await,
                Ok(None) => Ok(()),
                // A request we cannot read would fail the same way forever; it
                // has no id to report on either, so it is logged and dropped.
                Err(e) => {
                    tracing::error!(event = %event.id, r#type = %event.r#type, error = %e,
                        "unreadable notification request dropped");
                    Ok(())
                }
            }
        })
    }
}

/// The recipient in the form the providers want, or why it cannot be used.
pub fn normalize_recipient(
    channel: NotificationChannel,
    recipient: &str,
) -> Result<String, String> {
    match channel {
        NotificationChannel::Sms => {
            isp_platform::phone::normalize(recipient).map_err(|e| format!("InvalidRecipient: {e}"))
        }
        NotificationChannel::Email => {
            let r = recipient.trim();
            if crate::provider::smtp::valid_address(r) {
                Ok(r.to_string())
            } else {
                Err(format!("InvalidRecipient: {r:?} is not an email address."))
            }
        }
    }
}

/// Records one request (in the consumer's transaction) and publishes its first status.
pub async fn accept(
    tx: &mut PgConnection,
    requester: &str,
    req: NotificationRequest,
) -> anyhow::Result<()> {
    let (recipient, mut refusal) = match normalize_recipient(req.channel, &req.recipient) {
        Ok(r) => (r, None),
        Err(e) => (req.recipient.trim().to_string(), Some(e)),
    };
    if refusal.is_none() && req.body.trim().is_empty() {
        refusal = Some("EmptyBody: the message has no text.".into());
    }
    if refusal.is_none()
        && req.category == NotificationCategory::Promotional
        && store::is_suppressed(tx, req.channel, &recipient).await?
    {
        refusal = Some("Suppressed: the recipient opted out of promotional messages.".into());
    }
    let (status, due) = match refusal {
        None => ("Queued", true),
        Some(_) => ("Failed", false),
    };
    let inserted = sqlx::query(
        "INSERT INTO deliveries (id, requester, reference, channel, recipient, subject, body, \
                                 category, status, failure_reason, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $11 THEN now() END) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(req.id)
    .bind(requester)
    .bind(&req.reference)
    .bind(req.channel.as_str())
    .bind(&recipient)
    .bind(&req.subject)
    .bind(&req.body)
    .bind(req.category.as_str())
    .bind(status)
    .bind(&refusal)
    .bind(due)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(());
    }
    store::announce(tx, req.id).await?;
    if due {
        // Delivered on commit: the worker wakes when the row is visible.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(req.channel.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
