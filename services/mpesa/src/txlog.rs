//! The Daraja transaction log: one row per request to Daraja and per callback
//! from it, written in the transaction of its effect.

use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Entry {
    pub kind: &'static str,
    pub merchant_request_id: Option<String>,
    pub checkout_request_id: Option<String>,
    pub conversation_id: Option<String>,
    pub originator_conversation_id: Option<String>,
    pub receipt: Option<String>,
    pub amount: Option<Decimal>,
    pub phone: Option<String>,
    pub account_reference: Option<String>,
    pub invoice: Option<Uuid>,
    pub status: String,
    pub result_code: Option<String>,
    pub result_description: Option<String>,
    pub raw: Value,
}

pub async fn record(tx: &mut PgConnection, e: Entry) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO transactions (id, kind, merchant_request_id, checkout_request_id, conversation_id,
             originator_conversation_id, receipt, amount, phone, account_reference, invoice_id, status,
             result_code, result_description, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(id)
    .bind(e.kind)
    .bind(e.merchant_request_id)
    .bind(e.checkout_request_id)
    .bind(e.conversation_id)
    .bind(e.originator_conversation_id)
    .bind(e.receipt)
    .bind(e.amount)
    .bind(e.phone)
    .bind(e.account_reference)
    .bind(e.invoice)
    .bind(e.status)
    .bind(e.result_code)
    .bind(e.result_description)
    .bind(e.raw)
    .execute(&mut *tx)
    .await?;
    Ok(id)
}
