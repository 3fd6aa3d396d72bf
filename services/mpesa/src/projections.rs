//! Billing's subscribers, invoices and payments as M-Pesa needs them: to price a
//! prompt (outstanding = amount due - payments on the invoice), to match a typed
//! account number and to recognise a hashed payer. Core's partners (rate, number,
//! status) and CRM's converted referrals, for commissions. Snapshots are upserted
//! when newer than what is held (through [`Projection`]); a fresh schema converges
//! from the stream's history.

use isp_events::payloads::*;
use isp_events::projection::Change;
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use sqlx::PgConnection;

use crate::commissions::{self, Rules};
use crate::credit::account_key;
use crate::daraja::msisdn_sha256;

const SUBSCRIBERS: Projection = Projection::new(
    "subscribers",
    &[
        "account_number",
        "account_key",
        "full_name",
        "mpesa_number",
        "mpesa_sha256",
        "status",
        "lead_id",
    ],
)
.without_tombstone();
const INVOICES: Projection = Projection::new(
    "invoices",
    &[
        "invoice_number",
        "subscriber_id",
        "amount_due",
        "due_date",
        "status",
    ],
)
.without_tombstone();

const PARTNERS: Projection = Projection::new(
    "partners",
    &["full_name", "mpesa_number", "status", "commission_rate"],
);

pub struct BillingEvents {
    pub rules: Rules,
    pub auto_stk: crate::stk::AutoStk,
}

impl EventHandler for BillingEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = entity_change::<SubscriberSnapshot>(ev)? {
            return subscriber(tx, &s).await;
        }
        if let Some(i) = entity_change::<InvoiceSnapshot>(ev)? {
            let written = INVOICES
                .upsert(tx, &i, |row, i| {
                    row.bind(&i.invoice_number)
                        .bind(i.subscriber)
                        .bind(i.amount_due)
                        .bind(i.due_date)
                        .bind(i.status);
                })
                .await?;
            if written && i.status == isp_events::options::InvoiceStatus::Paid {
                commissions::invoice_paid(tx, &self.rules, i.subscriber).await?;
            }
            let trigger = if ev.is::<InvoiceCreated>() && self.auto_stk.on_created {
                Some("Invoice Created")
            } else if ev.is::<InvoiceOverdue>() && self.auto_stk.on_overdue {
                Some("Invoice Overdue")
            } else {
                None
            };
            if let Some(trigger) = trigger {
                crate::stk::queue_auto_prompt(tx, i.id, trigger, ev.time).await?;
            }
            return Ok(());
        }
        if let Some(p) = ev.payload::<PaymentReceived>()? {
            sqlx::query(
                "INSERT INTO invoice_payments (payment_id, invoice_id, amount, reference)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(p.id)
            .bind(p.invoice)
            .bind(p.amount_paid)
            .bind(&p.payment_reference)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

async fn subscriber(tx: &mut PgConnection, s: &Change<SubscriberSnapshot>) -> anyhow::Result<()> {
    // The hash is of the 12-digit 2547... form C2B confirmations use.
    let msisdn = isp_platform::phone::normalize(&s.mpesa_number)
        .map(|e| isp_platform::phone::msisdn(&e))
        .unwrap_or_else(|_| s.mpesa_number.clone());
    let key = account_key(&s.account_number);
    let full_name = format!("{} {}", s.first_name, s.last_name);
    let sha = msisdn_sha256(&msisdn);
    SUBSCRIBERS
        .upsert(tx, s, |row, s| {
            row.bind(&s.account_number)
                .bind(key)
                .bind(full_name)
                .bind(&s.mpesa_number)
                .bind(sha)
                .bind(s.status)
                .bind(s.lead_id);
        })
        .await?;
    Ok(())
}

/// Core's partners: the projection, and every rate a partner had (the rate at a
/// referral's conversion is the one that counts).
pub struct CoreEvents {
    pub rules: Rules,
}

impl EventHandler for CoreEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(p) = entity_change::<PartnerSnapshot>(ev)? {
            PARTNERS
                .upsert(tx, &p, |row, p| {
                    row.bind(&p.full_name)
                        .bind(&p.mpesa_number)
                        .bind(p.status)
                        .bind(p.commission_rate);
                })
                .await?;
            commissions::partner_seen(tx, &self.rules, p.id, p.updated_at, p.commission_rate)
                .await?;
        }
        Ok(())
    }
}

/// CRM's converted leads: a partner referral may earn a commission.
pub struct CrmEvents {
    pub rules: Rules,
}

impl EventHandler for CrmEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(c) = ev.payload::<LeadConverted>()? {
            if let Some(partner) = c.referred_by {
                commissions::referral(
                    tx,
                    &self.rules,
                    c.lead_id,
                    partner,
                    c.subscriber_id,
                    c.converted_at,
                )
                .await?;
            }
        }
        Ok(())
    }
}
