//! One credit per M-Pesa receipt. Every path money is seen by (STK callback, C2B
//! confirmation, Pull Transactions) ends here; the unique receipt decides, so the
//! same money arriving twice, by two paths or ten replays at once, is one
//! `mpesa.payment.confirmed`.

use chrono::{DateTime, Utc};
use isp_events::payloads::MpesaPaymentConfirmed;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Credit {
    pub receipt: String,
    pub amount: Decimal,
    pub phone: String,
    pub phone_sha256: Option<String>,
    /// The account number (canonical when recognised, else what was typed).
    pub account_reference: String,
    pub bill_ref_number: String,
    pub subscriber: Option<Uuid>,
    pub invoice: Option<Uuid>,
    pub suggested_subscriber: Option<Uuid>,
    /// `stk` | `c2b`
    pub source: &'static str,
    pub found_by: &'static str,
    pub time: DateTime<Utc>,
}

/// Records the credit and enqueues its event in `tx`; false when the receipt
/// was credited before (nothing is written then).
pub async fn credit(tx: &mut PgConnection, c: &Credit) -> anyhow::Result<bool> {
    let new = sqlx::query(
        "INSERT INTO payments (id, receipt, amount, phone, phone_sha256, account_reference,
             bill_ref_number, subscriber_id, invoice_id, suggested_subscriber_id, source, found_by,
             transaction_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (receipt) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(&c.receipt)
    .bind(c.amount)
    .bind(&c.phone)
    .bind(&c.phone_sha256)
    .bind(&c.account_reference)
    .bind(&c.bill_ref_number)
    .bind(c.subscriber)
    .bind(c.invoice)
    .bind(c.suggested_subscriber)
    .bind(c.source)
    .bind(c.found_by)
    .bind(c.time)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new {
        isp_events::outbox::enqueue(
            tx,
            "mpesa",
            &MpesaPaymentConfirmed {
                receipt: c.receipt.clone(),
                amount: c.amount,
                phone: c.phone.clone(),
                account_reference: c.account_reference.clone(),
                invoice: c.invoice,
                transaction_time: c.time,
                source: c.source.into(),
                bill_ref_number: (c.bill_ref_number != c.account_reference)
                    .then(|| c.bill_ref_number.clone()),
                payer_sha256: c.phone_sha256.clone(),
            },
        )
        .await?;
    } else {
        tracing::info!(receipt = %c.receipt, found_by = c.found_by, "receipt already credited");
    }
    Ok(new)
}

/// A typed account number as the key subscribers are matched on: case and
/// spaces do not matter; anything else (a missing check digit) does.
pub fn account_key(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// The subscriber an account number names: (id, canonical account number).
pub async fn subscriber_by_account(
    tx: &mut PgConnection,
    typed: &str,
) -> sqlx::Result<Option<(Uuid, String)>> {
    let key = account_key(typed);
    if key.is_empty() {
        return Ok(None);
    }
    sqlx::query_as("SELECT id, account_number FROM subscribers WHERE account_key = $1")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
}

/// The subscriber whose mpesaNumber hashes to `sha256` (C2B payers).
pub async fn subscriber_by_payer(
    tx: &mut PgConnection,
    sha256: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM subscribers WHERE mpesa_sha256 = $1 ORDER BY updated_at DESC LIMIT 1",
    )
    .bind(sha256)
    .fetch_optional(&mut *tx)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn account_keys_ignore_case_and_spaces_only() {
        assert_eq!(super::account_key(" 1000 16 "), "100016");
        assert_eq!(super::account_key("ab-12 c"), "AB12C");
        assert_ne!(super::account_key("10001"), super::account_key("100016"));
    }
}
