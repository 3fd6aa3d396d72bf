//! The send workers, one per channel: claim due deliveries (a lease, so two
//! replicas never send the same row and a crashed worker's rows are retried),
//! send them at the provider's configured rate, record each outcome.
//!
//! A message is sent at least once and, barring a crash between the provider's
//! acceptance and our commit, exactly once: the gateways take no idempotency key,
//! so that window cannot be closed, only kept short (the result is written right
//! after the answer, retried until the lease runs out).

use std::sync::Arc;
use std::time::Duration;

use isp_events::payloads::{DeliveryStatus, NotificationChannel};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::provider::{Outcome, Outgoing, Provider};
use crate::settings::Settings;
use crate::store::{self, Change, WAKE_CHANNEL};

#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    recipient: String,
    subject: Option<String>,
    body: String,
    attempts: i32,
}

pub struct Worker {
    pub pool: PgPool,
    pub channel: NotificationChannel,
    pub provider: Arc<dyn Provider>,
    pub settings: Arc<Settings>,
    pub rate_per_second: f64,
    pub wake: Arc<Notify>,
}

/// Listens for `pg_notify` wake-ups (sent by the request consumer on commit).
pub fn spawn_listener(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "notify: LISTEN failed; polling meanwhile");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            if listener.listen(WAKE_CHANNEL).await.is_err() {
                continue;
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => wake.notify_waiters(),
                        // Reconnected: wake-ups may have been lost; the workers poll anyway.
                        Ok(None) => wake.notify_waiters(),
                        Err(_) => break,
                    }
                }
            }
        }
    });
}

impl Worker {
    pub fn spawn(self, shutdown: CancellationToken) {
        tokio::spawn(async move { self.run(shutdown).await });
    }

    async fn run(self, shutdown: CancellationToken) {
        let me = Arc::new(self);
        let permits = Arc::new(Semaphore::new(me.settings.concurrency));
        let mut ticker = (me.rate_per_second > 0.0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / me.rate_per_second));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let batch = (me.settings.concurrency * 4) as i64;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            // Registered before the claim, so a wake-up during it is not missed.
            let woken = me.wake.notified();
            let rows = match me.claim(batch).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(channel = me.channel.as_str(), error = %e, "notify: claiming deliveries failed");
                    vec![]
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(me.settings.poll_interval) => {}
                }
                continue;
            }
            for row in rows {
                if let Some(t) = ticker.as_mut() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = t.tick() => {}
                    }
                }
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                };
                let me = me.clone();
                tokio::spawn(async move {
                    me.send_one(row).await;
                    drop(permit);
                });
            }
        }
    }

    async fn claim(&self, limit: i64) -> anyhow::Result<Vec<Claimed>> {
        Ok(sqlx::query_as(
            "UPDATE deliveries d \
             SET lease_until = now() + make_interval(secs => $3), attempts = d.attempts + 1, \
                 provider = $4, updated_at = now() \
             FROM (SELECT id FROM deliveries \
                   WHERE channel = $1 AND status = 'Queued' AND next_attempt_at <= now() \
                     AND (lease_until IS NULL OR lease_until < now()) \
                   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) due \
             WHERE d.id = due.id \
             RETURNING d.id, d.recipient, d.subject, d.body, d.attempts",
        )
        .bind(self.channel.as_str())
        .bind(limit)
        .bind(self.settings.lease.as_secs_f64())
        .bind(self.provider.name())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn send_one(&self, row: Claimed) {
        let msg = Outgoing {
            id: row.id,
            channel: self.channel,
            recipient: row.recipient.clone(),
            subject: row.subject.clone(),
            body: row.body.clone(),
        };
        let outcome = self.provider.send(&msg).await;
        metrics::counter!("notify_send_attempts_total",
        "provider" => self.provider.name(),
        "result" => match &outcome {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
        })
        .increment(1);
        // The message may be out: keep trying to write that down until the lease
        // would let another worker send it again.
        let deadline = tokio::time::Instant::now() + self.settings.lease / 2;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.record(&row, &outcome).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(delivery = %row.id, error = %e, "notify: recording a send failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(delivery = %row.id, error = %e, "notify: could not record a send; it will be retried");
                    return;
                }
            }
        }
    }

    async fn record(&self, row: &Claimed, outcome: &Outcome) -> anyhow::Result<()> {
        let provider = self.provider.name();
        let mut tx = self.pool.begin().await?;
        match outcome {
            Outcome::Accepted {
                status,
                provider_message_id,
                cost,
                cost_currency,
            } => {
                if let Some(pmid) = provider_message_id {
                    store::lock_message(&mut tx, provider, pmid).await?;
                }
                store::advance(
                    &mut tx,
                    row.id,
                    *status,
                    Change {
                        provider: Some(provider),
                        provider_message_id: provider_message_id.as_deref(),
                        cost: *cost,
                        cost_currency: cost_currency.as_deref(),
                        failure_reason: None,
                    },
                )
                .await?;
                if let Some(pmid) = provider_message_id {
                    store::apply_early_reports(&mut tx, row.id, provider, pmid).await?;
                }
            }
            Outcome::Transient { reason } if row.attempts < self.settings.max_attempts => {
                let backoff = self.settings.backoff(row.attempts);
                tracing::info!(delivery = %row.id, attempts = row.attempts, retry_in = ?backoff, reason = %reason,
                    "notify: transient failure, will retry");
                sqlx::query(
                    "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2), \
                            lease_until = NULL, last_error = $3, updated_at = now() \
                     WHERE id = $1 AND status = 'Queued'",
                )
                .bind(row.id)
                .bind(backoff.as_secs_f64())
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            Outcome::Transient { reason } => {
                let reason = format!(
                    "Retries exhausted after {} attempts: {reason}",
                    row.attempts
                );
                store::advance(
                    &mut tx,
                    row.id,
                    DeliveryStatus::Failed,
                    Change {
                        provider: Some(provider),
                        failure_reason: Some(&reason),
                        ..Default::default()
                    },
                )
                .await?;
            }
            Outcome::Permanent { reason, opted_out } => {
                store::advance(
                    &mut tx,
                    row.id,
                    DeliveryStatus::Failed,
                    Change {
                        provider: Some(provider),
                        failure_reason: Some(reason),
                        ..Default::default()
                    },
                )
                .await?;
                if *opted_out {
                    let source = match provider {
                        "twilio" => "twilio-21610",
                        _ => "africastalking-blacklist",
                    };
                    store::suppress(&mut tx, self.channel, &row.recipient, source, Some(reason))
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
