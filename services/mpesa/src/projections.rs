//! Billing's subscribers, invoices and payments as M-Pesa needs them: to price a
//! prompt (outstanding = amount due - payments on the invoice), to match a typed
//! account number and to recognise a hashed payer. Snapshots are upserted when
//! newer than what is held; a fresh schema converges from the stream's history.

use isp_events::payloads::*;
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use sqlx::PgConnection;

use crate::credit::account_key;
use crate::daraja::msisdn_sha256;

pub struct BillingEvents;

impl EventHandler for BillingEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some(s) = ev.payload::<SubscriberCreated>()? {
                return subscriber(tx, &s).await;
            }
            if let Some(s) = ev.payload::<SubscriberUpdated>()? {
                return subscriber(tx, &s).await;
            }
            for inv in [
                ev.payload::<InvoiceCreated>()?.map(|i| i.0),
                ev.payload::<InvoiceOverdue>()?.map(|i| i.0),
                ev.payload::<InvoiceUpdated>()?.map(|i| i.0),
            ]
            .into_iter()
            .flatten()
            {
                return invoice(tx, &inv).await;
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
        })
    }
}

async fn subscriber(tx: &mut PgConnection, s: &SubscriberSnapshot) -> anyhow::Result<()> {
    // The hash is of the 12-digit 2547... form C2B confirmations use.
    let msisdn = isp_platform::phone::normalize(&s.mpesa_number)
        .map(|e| isp_platform::phone::msisdn(&e))
        .unwrap_or_else(|_| s.mpesa_number.clone());
    sqlx::query(
        "INSERT INTO subscribers (id, account_number, account_key, full_name, mpesa_number,
             mpesa_sha256, status, lead_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET account_number = EXCLUDED.account_number,
             account_key = EXCLUDED.account_key, full_name = EXCLUDED.full_name,
             mpesa_number = EXCLUDED.mpesa_number, mpesa_sha256 = EXCLUDED.mpesa_sha256,
             status = EXCLUDED.status, lead_id = EXCLUDED.lead_id, updated_at = EXCLUDED.updated_at
         WHERE subscribers.updated_at <= EXCLUDED.updated_at",
    )
    .bind(s.id)
    .bind(&s.account_number)
    .bind(account_key(&s.account_number))
    .bind(format!("{} {}", s.first_name, s.last_name))
    .bind(&s.mpesa_number)
    .bind(msisdn_sha256(&msisdn))
    .bind(&s.status)
    .bind(s.lead_id)
    .bind(s.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn invoice(tx: &mut PgConnection, i: &InvoiceSnapshot) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO invoices (id, invoice_number, subscriber_id, amount_due, due_date, status, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET invoice_number = EXCLUDED.invoice_number,
             subscriber_id = EXCLUDED.subscriber_id, amount_due = EXCLUDED.amount_due,
             due_date = EXCLUDED.due_date, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
         WHERE invoices.updated_at <= EXCLUDED.updated_at",
    )
    .bind(i.id)
    .bind(&i.invoice_number)
    .bind(i.subscriber)
    .bind(i.amount_due)
    .bind(i.due_date)
    .bind(&i.status)
    .bind(i.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
