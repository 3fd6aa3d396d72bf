//! Events Billing consumes: Core's plans (the local projection subscribers are
//! checked against), NOC's provisioning (activation, technical fields) and
//! M-Pesa's confirmed payments and paid partner commissions (expenses).

use std::sync::Arc;

use chrono::Datelike;
use isp_events::options::SubscriberStatus;
use isp_events::payloads::*;
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use isp_platform::auth::Principal;
use isp_platform::collection::Collection;
use isp_platform::ApiError;
use serde_json::{json, Map};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ledger;
use crate::subscribers::first_period_start;

pub struct CoreEvents;

/// Core's plans, which subscribers are checked against and priced from.
const PLANS: Projection = Projection::new(
    "plans",
    &[
        "name",
        "price",
        "billing_cycle",
        "plan_enabled",
        "active_for_new_signups",
    ],
);

impl EventHandler for CoreEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = entity_change::<PlanSnapshot>(ev)? {
            PLANS
                .upsert(tx, &p, |row, p| {
                    row.bind(&p.name)
                        .bind(p.price)
                        .bind(p.billing_cycle)
                        .bind(p.plan_enabled)
                        .bind(p.active_for_new_signups);
                })
                .await?;
        }
        Ok(())
    }
}

pub struct NocEvents {
    pub ctx: Arc<isp_platform::ServiceContext>,
}

impl EventHandler for NocEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = ev.payload::<SubscriberProvisioned>()? {
            return self.provisioned(tx, &p).await;
        }
        if let Some(n) = ev.payload::<SubscriberNetworkUpdated>()? {
            let at = n.at.unwrap_or(ev.time);
            let known: Option<bool> = sqlx::query_scalar(
                "SELECT network_updated_at IS NULL OR network_updated_at <= $2
                 FROM subscribers WHERE id = $1 FOR UPDATE",
            )
            .bind(n.subscriber_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            match known {
                None => {
                    // Billing creates subscribers before NOC hears of them, so
                    // this is a stray; retrying would not help.
                    tracing::warn!(subscriber = %n.subscriber_id, "network_updated for an unknown subscriber");
                }
                Some(false) => {
                    tracing::debug!(subscriber = %n.subscriber_id, "older network_updated ignored");
                }
                Some(true) => {
                    sqlx::query(
                        "UPDATE subscribers SET connection_type = $2, assigned_ip = $3,
                                network_updated_at = $4, updated_at = now() WHERE id = $1",
                    )
                    .bind(n.subscriber_id)
                    .bind(n.connection_type)
                    .bind(&n.assigned_ip)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl NocEvents {
    /// Mirrors the technical fields; a Pending Installation subscriber becomes
    /// Active and its first paid period starts on the activation day (or after the
    /// trial), so `nextDueDate` is one cycle later: the cycle the first invoice was
    /// priced for, even if `billingCycle` changed before installation.
    async fn provisioned(
        &self,
        tx: &mut PgConnection,
        p: &SubscriberProvisioned,
    ) -> anyhow::Result<()> {
        let row: Option<(String, Option<chrono::NaiveDate>)> = sqlx::query_as(
            "SELECT status, trial_end_date FROM subscribers WHERE id = $1 FOR UPDATE",
        )
        .bind(p.subscriber_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, trial_end)) = row else {
            tracing::warn!(subscriber = %p.subscriber_id, "provisioned event for an unknown subscriber");
            return Ok(());
        };
        // A later network_updated may have been applied already (events can
        // arrive out of order): then the mirrored fields stay as they are.
        sqlx::query(
            "UPDATE subscribers SET connection_type = $2, assigned_ip = $3, network_updated_at = $4,
                    updated_at = now()
             WHERE id = $1 AND (network_updated_at IS NULL OR network_updated_at <= $4)",
        )
        .bind(p.subscriber_id)
        .bind(p.connection_type)
        .bind(&p.assigned_ip)
        .bind(p.at)
        .execute(&mut *tx)
        .await?;
        if status == SubscriberStatus::PendingInstallation {
            let activated = p.at.with_timezone(&self.ctx.config.timezone).date_naive();
            let start = first_period_start(activated, trial_end);
            sqlx::query(
                "UPDATE subscribers SET status = 'Active', billing_anchor_day = $2,
                        next_due_date = add_cycle($3, COALESCE(first_period_cycle, billing_cycle), $2)
                 WHERE id = $1",
            )
            .bind(p.subscriber_id)
            .bind(start.day() as i32)
            .bind(start)
            .execute(&mut *tx)
            .await?;
            ledger::publish_subscriber_change(
                tx,
                &self.ctx,
                p.subscriber_id,
                Some(SubscriberStatus::PendingInstallation),
                SubscriberStatus::Active,
                Some("Installation complete".into()),
            )
            .await?;
        } else {
            let snap = ledger::subscriber_snapshot(tx, p.subscriber_id).await?;
            isp_events::outbox::enqueue(tx, self.ctx.name, &SubscriberUpdated(snap)).await?;
        }
        Ok(())
    }
}

pub struct MpesaEvents {
    pub ctx: Arc<isp_platform::ServiceContext>,
    pub payments: Arc<Collection>,
}

impl EventHandler for MpesaEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(m) = ev.payload::<MpesaPaymentConfirmed>()? {
            return self.confirmed(tx, &m).await;
        }
        if let Some(c) = ev.payload::<MpesaCommissionPaid>()? {
            return self.commission_paid(tx, &c).await;
        }
        Ok(())
    }
}

impl MpesaEvents {
    /// Payments to one account are recorded in order (they settle the same
    /// invoices and balance); different accounts' in parallel.
    pub fn lane(ev: &CloudEvent) -> Option<String> {
        match ev.data.get("accountReference").and_then(|a| a.as_str()) {
            Some(account) => Some(account.trim().to_string()),
            None => ev.subject.clone(),
        }
    }

    /// A partner's commission paid by B2C: an expense (category Commissions, the
    /// M-Pesa receipt as its reference), once per commission: the expense's id is
    /// the commission's, so a second event for it changes nothing.
    async fn commission_paid(
        &self,
        tx: &mut PgConnection,
        c: &MpesaCommissionPaid,
    ) -> anyhow::Result<()> {
        let date = c
            .paid_at
            .with_timezone(&self.ctx.config.timezone)
            .date_naive();
        let vendor = if c.partner_name.is_empty() {
            "Partner".to_string()
        } else {
            c.partner_name.clone()
        };
        sqlx::query(
            "INSERT INTO expenses (id, expense_date, category, vendor, amount, description)
             VALUES ($1, $2, 'Commissions', $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(c.commission)
        .bind(date)
        .bind(vendor)
        .bind(c.amount)
        .bind(format!(
            "Partner referral commission, M-Pesa receipt {} (B2C to {})",
            c.receipt, c.phone
        ))
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// One Payment per receipt. The invoice is the one the STK push was for, else
    /// the subscriber's oldest open invoice, else their latest (the money becomes
    /// credit). A receipt naming no known subscriber is logged and skipped.
    async fn confirmed(
        &self,
        tx: &mut PgConnection,
        m: &MpesaPaymentConfirmed,
    ) -> anyhow::Result<()> {
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE payment_method = 'Mpesa' AND payment_reference = $1)",
        )
        .bind(&m.receipt)
        .fetch_one(&mut *tx)
        .await?;
        if seen || crate::unallocated::is_kept(tx, &m.receipt).await? {
            return Ok(());
        }
        let invoice: Option<Uuid> = match m.invoice {
            Some(i) => sqlx::query_scalar(
                "SELECT id FROM invoices WHERE id = $1 AND status NOT IN ('Draft', 'Cancelled')",
            )
            .bind(i)
            .fetch_optional(&mut *tx)
            .await?,
            None => None,
        };
        let invoice = match invoice {
            Some(i) => Some(i),
            None => {
                sqlx::query_scalar(
                    "SELECT i.id FROM invoices i JOIN subscribers s ON s.id = i.subscriber_id
                     WHERE s.account_number = $1 AND i.status NOT IN ('Draft', 'Cancelled')
                     ORDER BY (i.status IN ('Unpaid', 'Overdue')) DESC,
                              CASE WHEN i.status IN ('Unpaid', 'Overdue') THEN i.due_date END ASC,
                              i.created_at DESC
                     LIMIT 1",
                )
                .bind(m.account_reference.trim())
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(invoice) = invoice else {
            return crate::unallocated::keep(
                tx,
                m,
                "The account number matches no subscriber with an invoice.",
            )
            .await;
        };
        let date = m
            .transaction_time
            .with_timezone(&self.ctx.config.timezone)
            .date_naive();
        let mut data = Map::new();
        data.insert("paymentReference".into(), json!(m.receipt));
        data.insert("invoice".into(), json!(invoice.to_string()));
        data.insert(
            "amountPaid".into(),
            json!(isp_platform::money::format(m.amount)),
        );
        data.insert("paymentMethod".into(), json!("Mpesa"));
        data.insert("paymentDate".into(), json!(date.to_string()));
        let principal = Principal::Service {
            name: "mpesa".into(),
            scopes: vec![],
        };
        // In a savepoint: a refused payment leaves nothing behind but is kept as
        // unallocated money in the same transaction.
        let mut sp = sqlx::Connection::begin(&mut *tx).await?;
        match self
            .payments
            .create_in(&mut sp, &self.ctx, &principal, data)
            .await
        {
            Ok(_) => {
                sp.commit().await?;
                Ok(())
            }
            Err(ApiError::BadRequest(e)) | Err(ApiError::Conflict(e)) => {
                sp.rollback().await?;
                let why = e
                    .iter()
                    .map(|f| f.message.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                crate::unallocated::keep(tx, m, &format!("Refused by the invoice: {why}")).await
            }
            Err(e) => Err(anyhow::anyhow!("recording M-Pesa payment: {e:?}")),
        }
    }
}
