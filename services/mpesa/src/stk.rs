//! STK push (Lipa na M-Pesa Online): staff or a service ask for a prompt on the
//! customer's phone for an invoice's outstanding amount; Daraja's callback (or,
//! when the callback is lost, the STK query) settles it. A paid prompt is credited
//! by its M-Pesa receipt (see `credit`); the query does not carry the receipt, so a
//! prompt the query finds paid gets its receipt from Pull Transactions.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use isp_events::options::InvoiceStatus;
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::collection::Collection;
use isp_platform::error::FieldError;
use isp_platform::{ApiError, ApiResult};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgConnection;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::collections::FIN;
use crate::credit::{credit, Credit};
use crate::daraja::{StkCallback, StkCallbackBody, StkPush};
use crate::status::StkStatus;
use crate::txlog::{record, Entry};
use crate::Mpesa;

/// Daraja's per-transaction limits for STK push, whole KES.
pub const STK_MIN: i64 = 1;
pub const STK_MAX: i64 = 250_000;

#[derive(Clone)]
struct St {
    m: Arc<Mpesa>,
    coll: Arc<Collection>,
}

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.m.ctx.keys
    }
}

pub fn routes(m: Arc<Mpesa>, coll: Arc<Collection>) -> Router {
    Router::new()
        .route("/api/mpesa/stk-push", post(stk_push))
        .with_state(St { m, coll })
}

#[derive(OpenApi)]
#[openapi(paths(stk_push), components(schemas(StkPushInput)))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The body: `invoice` (id) to collect, Unpaid or Overdue with something
/// outstanding; `phone`, the Kenyan mobile number to prompt (07.., 01.., 2547..,
/// +2547..), default the subscriber's mpesaNumber. Exactly what [`stk_push`] reads.
pub struct StkPushInput;

impl utoipa::PartialSchema for StkPushInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use isp_platform::collection::Kind;
        use isp_platform::openapi::field_input as f;
        let mut invoice = f("invoice", Kind::Relation, true);
        invoice["description"] =
            json!("The invoice to collect: Unpaid or Overdue, with something outstanding");
        let mut phone = f("phone", Kind::Phone, false);
        phone["description"] = json!("The Kenyan mobile number to prompt (07.., 01.., 2547.., +2547..); default: the subscriber's mpesaNumber");
        isp_platform::openapi::schema(json!({
            "type": "object", "additionalProperties": false, "required": ["invoice"],
            "properties": {"invoice": invoice, "phone": phone}}))
    }
}

impl ToSchema for StkPushInput {}

/// A Kenyan mobile number (Safaricom, Airtel, Telkom all start 7 or 1).
pub fn kenyan_mobile(input: &str) -> Result<String, String> {
    let e164 = isp_platform::phone::normalize(input)?;
    let ok = e164.len() == 13
        && (e164.starts_with("+2547") || e164.starts_with("+2541"))
        && e164[1..].chars().all(|c| c.is_ascii_digit());
    if ok {
        Ok(e164)
    } else {
        Err(format!("{input:?} is not a Kenyan mobile number."))
    }
}

/// Sends an M-Pesa prompt (STK push) for an invoice's outstanding amount (Admin,
/// Billing Manager, or a service token with `mpesa.stkPush.create`). The amount is
/// the outstanding amount rounded **up** to the whole shilling (Daraja takes whole
/// KES; the cents paid over become credit), AccountReference is the subscriber's
/// account number and the phone defaults to the subscriber's mpesaNumber. The
/// prompt is Pending until Daraja's callback, or the STK query, settles it.
#[utoipa::path(post, path = "/api/mpesa/stk-push", tag = "stkRequests", request_body = StkPushInput,
    extensions(("x-references" = json!(["invoice"])),
        ("x-rules" = json!(["invoice: its outstanding amount, rounded up to the shilling, is KES 1 to 250,000"]))),
    responses(
        (status = 201, description = "{doc: the STK request (Pending), message: Daraja's CustomerMessage}"),
        (status = 400, description = "Every bad field named: invoice (missing, not an id, unknown, amount outside KES 1-250,000), phone (not a Kenyan mobile number)"),
        (status = 401), (status = 403),
        (status = 409, description = "The invoice is Paid, Cancelled or Draft, has nothing outstanding, or already has a prompt waiting"),
        (status = 503, description = "Daraja did not accept the prompt (recorded as a Failed STK request); it may be sent again")))]
async fn stk_push(
    State(s): State<St>,
    p: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.require(FIN, "mpesa.stkPush.create")?;
    let v = isp_platform::http::parse_json_body::<Value>(&body)?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let mut errors = vec![];
    for k in obj.keys() {
        if k != "invoice" && k != "phone" {
            errors.push(FieldError::new(k.clone(), "Unknown field."));
        }
    }
    let invoice = match obj.get("invoice") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("invoice", "invoice is required."));
            None
        }
        Some(Value::String(x)) => match Uuid::parse_str(x.trim()) {
            Ok(u) => Some(u),
            Err(_) => {
                errors.push(FieldError::new("invoice", "Must be a valid id."));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("invoice", "Must be a valid id."));
            None
        }
    };
    let phone = match obj.get("phone") {
        None | Some(Value::Null) => None,
        Some(Value::String(x)) => match kenyan_mobile(x) {
            Ok(e) => Some(e),
            Err(msg) => {
                errors.push(FieldError::new("phone", msg));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("phone", "Must be a phone number (text)."));
            None
        }
    };
    let Some(invoice) = invoice.filter(|_| errors.is_empty()) else {
        return Err(ApiError::BadRequest(errors));
    };
    let (trigger, by) = match &p {
        Principal::Staff { .. } => ("Staff", p.label()),
        Principal::Service { .. } => ("Service", p.label()),
    };
    let id = prepare(&s.m, invoice, phone, trigger, &by).await?;
    let message = send(&s.m, id).await;
    let mut conn = s.m.ctx.pool.acquire().await?;
    let doc = s
        .coll
        .fetch(&mut conn, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("STK request"))?;
    match message {
        Ok(msg) => Ok((
            StatusCode::CREATED,
            Json(json!({"doc": s.coll.present(&p, &doc), "message": msg})),
        )),
        Err(msg) => Err(ApiError::Unavailable(msg)),
    }
}

/// Prices the prompt from the projections and saves it (Requested). Refusals
/// name the field.
async fn prepare(
    m: &Mpesa,
    invoice: Uuid,
    phone: Option<String>,
    trigger: &str,
    by: &str,
) -> ApiResult<Uuid> {
    let mut tx = m.ctx.pool.begin().await?;
    type Row = (
        String,
        InvoiceStatus,
        Decimal,
        Uuid,
        Option<String>,
        Option<String>,
        Decimal,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT i.invoice_number, i.status, i.amount_due, i.subscriber_id, s.account_number, s.mpesa_number,
                COALESCE((SELECT sum(amount) FROM invoice_payments ip WHERE ip.invoice_id = i.id), 0)
         FROM invoices i LEFT JOIN subscribers s ON s.id = i.subscriber_id WHERE i.id = $1",
    )
    .bind(invoice)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((number, status, due, subscriber, account, mpesa_number, paid)) = row else {
        return Err(ApiError::field(
            "invoice",
            "Unknown invoice (a new one reaches M-Pesa within seconds: try again shortly).",
        ));
    };
    if matches!(
        status,
        InvoiceStatus::Paid | InvoiceStatus::Cancelled | InvoiceStatus::Draft
    ) {
        return Err(ApiError::conflict_field(
            "invoice",
            format!("Invoice {number} is {status}: there is nothing to collect."),
        ));
    }
    let outstanding = due - paid;
    if outstanding <= Decimal::ZERO {
        return Err(ApiError::conflict_field(
            "invoice",
            format!("Invoice {number} has nothing outstanding."),
        ));
    }
    let (Some(account), Some(mpesa_number)) = (account, mpesa_number) else {
        return Err(ApiError::field(
            "invoice",
            "The invoice's subscriber is not known to M-Pesa yet: try again shortly.",
        ));
    };
    let amount = outstanding.ceil();
    let whole = amount.to_i64().unwrap_or(i64::MAX);
    let mut errors = vec![];
    if !(STK_MIN..=STK_MAX).contains(&whole) {
        errors.push(FieldError::new(
            "invoice",
            format!("The outstanding KES {amount} is outside what one M-Pesa prompt can collect (KES {STK_MIN} to {STK_MAX})."),
        ));
    }
    let phone = match phone {
        Some(p) => Some(p),
        None => match kenyan_mobile(&mpesa_number) {
            Ok(p) => Some(p),
            Err(_) => {
                errors.push(FieldError::new(
                    "phone",
                    format!("The subscriber's mpesaNumber {mpesa_number:?} is not a Kenyan mobile number: give phone."),
                ));
                None
            }
        },
    };
    let Some(phone) = phone.filter(|_| errors.is_empty()) else {
        return Err(ApiError::BadRequest(errors));
    };
    let id = Uuid::now_v7();
    let ins = sqlx::query(
        "INSERT INTO stk_requests (id, invoice_id, subscriber_id, account_reference, phone, amount, trigger, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(invoice)
    .bind(subscriber)
    .bind(&account)
    .bind(&phone)
    .bind(amount)
    .bind(trigger)
    .bind(by)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(d)) = &ins {
        if d.constraint() == Some("stk_requests_open_invoice_key") {
            return Err(ApiError::conflict_field(
                "invoice",
                format!("A prompt for invoice {number} is already waiting for the customer."),
            ));
        }
        if d.constraint() == Some("stk_requests_auto_key") {
            return Err(ApiError::conflict_field(
                "invoice",
                format!("Invoice {number} was prompted for this trigger already."),
            ));
        }
    }
    ins?;
    tx.commit().await?;
    Ok(id)
}

/// Asks Daraja for the prompt of a Requested STK request and records the answer:
/// Pending with Daraja's ids, or Failed with its error. Ok(CustomerMessage) or
/// Err(why, for the caller).
pub(crate) async fn send(m: &Mpesa, id: Uuid) -> Result<String, String> {
    let row: Result<(String, String, Decimal, Uuid), _> = sqlx::query_as(
        "SELECT r.phone, r.account_reference, r.amount, r.invoice_id FROM stk_requests r WHERE r.id = $1",
    )
    .bind(id)
    .fetch_one(&m.ctx.pool)
    .await;
    let (phone, account, amount, invoice) = row.map_err(|e| e.to_string())?;
    let number: Option<String> =
        sqlx::query_scalar("SELECT invoice_number FROM invoices WHERE id = $1")
            .bind(invoice)
            .fetch_optional(&m.ctx.pool)
            .await
            .map_err(|e| e.to_string())?;
    let req = StkPush {
        amount: amount.to_i64().unwrap_or(0),
        phone: isp_platform::phone::msisdn(&phone),
        account_reference: account.chars().take(12).collect(),
        description: number
            .unwrap_or_else(|| "Invoice".into())
            .chars()
            .take(13)
            .collect(),
        callback_url: m.hook("stk"),
    };
    let (raw_req, res) = m.daraja.stk_push(&req).await;
    let outcome = async {
        let mut tx = m.ctx.pool.begin().await?;
        let answer = match &res {
            Ok(ack) if ack.response_code == "0" => {
                sqlx::query(
                    "UPDATE stk_requests SET status = 'Pending', merchant_request_id = $2, checkout_request_id = $3,
                         next_query_at = now() + make_interval(secs => $4), updated_at = now()
                     WHERE id = $1 AND status = 'Requested'",
                )
                .bind(id)
                .bind(&ack.merchant_request_id)
                .bind(&ack.checkout_request_id)
                .bind(m.opts.stk_query_after.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                record(
                    &mut tx,
                    Entry {
                        kind: "STK Push",
                        merchant_request_id: Some(ack.merchant_request_id.clone()),
                        checkout_request_id: Some(ack.checkout_request_id.clone()),
                        amount: Some(amount),
                        phone: Some(phone.clone()),
                        account_reference: Some(account.clone()),
                        invoice: Some(invoice),
                        status: "Accepted".into(),
                        result_code: Some("0".into()),
                        result_description: Some(ack.customer_message.clone()),
                        raw: json!({"request": raw_req, "response": {"MerchantRequestID": ack.merchant_request_id,
                            "CheckoutRequestID": ack.checkout_request_id, "ResponseCode": ack.response_code,
                            "CustomerMessage": ack.customer_message}}),
                        ..Default::default()
                    },
                )
                .await?;
                replay_early_callback(&mut tx, m, &ack.checkout_request_id).await?;
                Ok(ack.customer_message.clone())
            }
            other => {
                let (code, desc, body) = match other {
                    Ok(ack) => (ack.response_code.clone(), ack.customer_message.clone(), json!({"ResponseCode": ack.response_code})),
                    Err(e) => (
                        e.code().unwrap_or("unreachable").to_string(),
                        e.to_string(),
                        e.body(),
                    ),
                };
                sqlx::query(
                    "UPDATE stk_requests SET status = 'Failed', result_code = $2, result_description = $3, updated_at = now()
                     WHERE id = $1 AND status = 'Requested'",
                )
                .bind(id)
                .bind(&code)
                .bind(&desc)
                .execute(&mut *tx)
                .await?;
                record(
                    &mut tx,
                    Entry {
                        kind: "STK Push",
                        amount: Some(amount),
                        phone: Some(phone.clone()),
                        account_reference: Some(account.clone()),
                        invoice: Some(invoice),
                        status: "Refused".into(),
                        result_code: Some(code.clone()),
                        result_description: Some(desc.clone()),
                        raw: json!({"request": raw_req, "response": body}),
                        ..Default::default()
                    },
                )
                .await?;
                Err(format!("Daraja did not accept the prompt: {desc}"))
            }
        };
        tx.commit().await?;
        anyhow::Ok(answer)
    }
    .await;
    match outcome {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(stk = %id, "recording Daraja's STK answer: {e:#}");
            Err(
                "The prompt's outcome could not be recorded; it is settled by the STK query."
                    .into(),
            )
        }
    }
}

/// A callback that came before we stored Daraja's ack (it was recorded as
/// "Unknown request"): apply it now that the request is known.
async fn replay_early_callback(
    tx: &mut PgConnection,
    m: &Mpesa,
    checkout: &str,
) -> anyhow::Result<()> {
    let early: Option<(Uuid, Value)> = sqlx::query_as(
        "SELECT id, raw FROM transactions WHERE kind = 'STK Callback' AND checkout_request_id = $1
             AND status = 'Unknown request' ORDER BY created_at LIMIT 1",
    )
    .bind(checkout)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((tid, raw)) = early {
        if let Ok(b) = serde_json::from_value::<StkCallbackBody>(raw) {
            let status = apply_callback(tx, m, &b.body.callback).await?;
            sqlx::query("UPDATE transactions SET status = $2, updated_at = now() WHERE id = $1")
                .bind(tid)
                .bind(format!("{status} (arrived before the ack)"))
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Daraja's STK callback: recorded, then applied to the request it names (a
/// callback for ids we never issued is recorded and ignored).
pub(crate) async fn callback(m: &Mpesa, body: &Bytes) -> anyhow::Result<()> {
    let (raw, _) = crate::hooks::raw_of(body);
    let parsed = serde_json::from_value::<StkCallbackBody>(raw.clone())
        .ok()
        .map(|b| b.body.callback);
    let mut tx = m.ctx.pool.begin().await?;
    let Some(cb) = parsed else {
        record(
            &mut tx,
            Entry {
                kind: "STK Callback",
                status: "Malformed".into(),
                raw,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        tracing::warn!("malformed STK callback recorded");
        return Ok(());
    };
    let status = apply_callback(&mut tx, m, &cb).await?;
    record(
        &mut tx,
        Entry {
            kind: "STK Callback",
            merchant_request_id: Some(cb.merchant_request_id.clone()),
            checkout_request_id: Some(cb.checkout_request_id.clone()),
            receipt: cb.receipt(),
            amount: cb.amount(),
            phone: cb.phone(),
            status,
            result_code: Some(cb.result_code.0.clone()),
            result_description: Some(cb.result_desc.clone()),
            raw,
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Applies a callback in `tx`; returns what happened, for the log.
async fn apply_callback(
    tx: &mut PgConnection,
    m: &Mpesa,
    cb: &StkCallback,
) -> anyhow::Result<String> {
    let _ = m;
    type Row = (Uuid, Uuid, Uuid, String, String, Decimal, StkStatus);
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, invoice_id, subscriber_id, account_reference, phone, amount, status
         FROM stk_requests WHERE checkout_request_id = $1 FOR UPDATE",
    )
    .bind(&cb.checkout_request_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, invoice, subscriber, account, phone, asked, status)) = row else {
        tracing::warn!(checkout = %cb.checkout_request_id, "STK callback for a request we did not issue");
        return Ok("Unknown request".into());
    };
    if !cb.result_code.is_success() {
        if status.open() {
            sqlx::query(
                "UPDATE stk_requests SET status = 'Failed', result_code = $2, result_description = $3,
                     settled_by = 'Callback', updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(&cb.result_code.0)
            .bind(&cb.result_desc)
            .execute(&mut *tx)
            .await?;
            return Ok(StkStatus::Failed.to_string());
        }
        return Ok("Duplicate".into());
    }
    let Some(receipt) = cb.receipt() else {
        return Ok("Malformed (success without a receipt)".into());
    };
    let amount = cb.amount().unwrap_or(asked);
    // Paid even if the query had found it failed or timed out: the money moved.
    sqlx::query(
        "UPDATE stk_requests SET status = 'Paid', receipt = $2, result_code = $3, result_description = $4,
             settled_by = COALESCE(settled_by, 'Callback'), updated_at = now()
         WHERE id = $1 AND (receipt IS NULL OR status <> 'Paid')",
    )
    .bind(id)
    .bind(&receipt)
    .bind(&cb.result_code.0)
    .bind(&cb.result_desc)
    .execute(&mut *tx)
    .await?;
    let msisdn = cb
        .phone()
        .unwrap_or_else(|| isp_platform::phone::msisdn(&phone));
    let new = credit(
        tx,
        &Credit {
            receipt,
            amount,
            phone_sha256: Some(crate::daraja::msisdn_sha256(&msisdn)),
            phone: msisdn,
            account_reference: account.clone(),
            bill_ref_number: account,
            subscriber: Some(subscriber),
            invoice: Some(invoice),
            suggested_subscriber: None,
            source: "stk",
            found_by: "STK Callback",
            time: cb.transaction_time().unwrap_or_else(chrono::Utc::now),
        },
    )
    .await?;
    Ok(if new { "Credited" } else { "Duplicate" }.into())
}

/// Which invoice events send a prompt automatically (`ISP_MPESA_AUTO_STK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutoStk {
    pub on_created: bool,
    pub on_overdue: bool,
}

impl AutoStk {
    /// `off`, `created`, `overdue`, or `created,overdue`.
    pub fn parse(s: &str) -> anyhow::Result<AutoStk> {
        let mut a = AutoStk::default();
        for part in s.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            match part.as_str() {
                "" | "off" | "none" | "false" => {}
                "created" => a.on_created = true,
                "overdue" => a.on_overdue = true,
                other => anyhow::bail!(
                    "ISP_MPESA_AUTO_STK takes off, created, overdue or created,overdue, not {other:?}"
                ),
            }
        }
        Ok(a)
    }
    fn any(&self) -> bool {
        self.on_created || self.on_overdue
    }
}

/// Events older than this send no automatic prompt (a fresh schema converging
/// from the stream's history must not prompt for last year's invoices).
const AUTO_MAX_AGE: chrono::Duration = chrono::Duration::hours(1);
/// Tries while the invoice's subscriber is not projected yet.
const AUTO_MAX_ATTEMPTS: i32 = 10;

/// Queues the automatic prompt of `invoice` for `trigger` (once: the key is the
/// invoice and trigger), in the consumer's transaction.
pub(crate) async fn queue_auto_prompt(
    tx: &mut PgConnection,
    invoice: Uuid,
    trigger: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    if chrono::Utc::now() - at > AUTO_MAX_AGE {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO auto_prompts (invoice_id, trigger) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(invoice)
    .bind(trigger)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Sends queued automatic prompts: priced and refused exactly as staff's are
/// (a Paid invoice, nothing outstanding, a prompt already waiting are Skipped
/// with the reason); the STK request carries the trigger, unique per invoice.
async fn auto_due(m: &Mpesa) -> anyhow::Result<()> {
    let due: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "UPDATE auto_prompts SET attempts = attempts + 1, updated_at = now(),
             next_at = now() + make_interval(secs => 2 * power(2, LEAST(attempts, 6)))
         WHERE (invoice_id, trigger) IN (
             SELECT invoice_id, trigger FROM auto_prompts WHERE status = 'Queued' AND next_at <= now()
             ORDER BY next_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING invoice_id, trigger, attempts",
    )
    .fetch_all(&m.ctx.pool)
    .await?;
    for (invoice, trigger, attempts) in due {
        let (status, outcome, stk) = match prepare(m, invoice, None, &trigger, "automatic").await {
            Ok(id) => {
                let msg = match send(m, id).await {
                    Ok(msg) => msg,
                    Err(why) => why,
                };
                ("Sent", msg, Some(id))
            }
            Err(e) => {
                let why = e
                    .errors()
                    .iter()
                    .map(|f| f.message.clone())
                    .collect::<Vec<_>>()
                    .join(" ");
                let wait = why.contains("try again shortly") && attempts < AUTO_MAX_ATTEMPTS;
                (if wait { "Queued" } else { "Skipped" }, why, None)
            }
        };
        sqlx::query(
            "UPDATE auto_prompts SET status = $3, outcome = $4, stk_request_id = $5, updated_at = now()
             WHERE invoice_id = $1 AND trigger = $2",
        )
        .bind(invoice)
        .bind(&trigger)
        .bind(status)
        .bind(outcome)
        .bind(stk)
        .execute(&m.ctx.pool)
        .await?;
    }
    Ok(())
}

/// Settles Pending prompts whose callback has not come: the STK query after
/// `ISP_MPESA_STK_QUERY_AFTER_SECONDS`, then again with back-off while Daraja
/// says the transaction is being processed.
pub(crate) fn spawn_query_worker(m: Arc<Mpesa>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = m.ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(m.opts.tick) => {}
            }
            if let Err(e) = query_due(&m).await {
                tracing::warn!("STK query pass: {e:#}");
            }
            if m.opts.auto_stk.any() {
                if let Err(e) = auto_due(&m).await {
                    tracing::warn!("automatic STK prompt pass: {e:#}");
                }
            }
        }
    });
}

async fn query_due(m: &Mpesa) -> anyhow::Result<()> {
    // A prompt still Requested well past Daraja's timeout was never answered, or
    // its answer was lost with a restart: it would block the invoice's next prompt
    // for ever. Without Daraja's ids no callback or query can settle it; if the
    // customer paid, Pull Transactions credits the receipt by account number.
    let stale = sqlx::query(
        "UPDATE stk_requests SET status = 'Failed', result_code = 'No answer',
             result_description = 'Daraja''s answer to the prompt was never recorded (timeout or restart); a payment is credited by Pull Transactions',
             updated_at = now()
         WHERE status = 'Requested' AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(m.daraja.config().timeout.as_secs_f64() * 2.0 + 60.0)
    .execute(&m.ctx.pool)
    .await?
    .rows_affected();
    if stale > 0 {
        tracing::warn!(stale, "STK prompts without a recorded answer marked Failed");
    }
    // Claimed by moving next_query_at on (with back-off), so replicas and the next
    // pass do not query the same prompt at once.
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE stk_requests SET queries = queries + 1,
             next_query_at = now() + make_interval(secs => $1 * power(2, LEAST(queries, 6)))
         WHERE id IN (SELECT id FROM stk_requests WHERE status = 'Pending' AND next_query_at <= now()
                      ORDER BY next_query_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING id, checkout_request_id",
    )
    .bind(m.opts.stk_query_after.as_secs_f64())
    .fetch_all(&m.ctx.pool)
    .await?;
    for (id, checkout) in due {
        let res = m.daraja.stk_query(&checkout).await;
        let mut tx = m.ctx.pool.begin().await?;
        let status: StkStatus =
            sqlx::query_scalar("SELECT status FROM stk_requests WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let mut entry = Entry {
            kind: "STK Query",
            checkout_request_id: Some(checkout.clone()),
            ..Default::default()
        };
        let mut paid = false;
        match (&res, status) {
            (_, s) if s != StkStatus::Pending => {
                entry.status = format!("Settled already ({s})");
            }
            (Ok((_, a)), _) if a.result_code.is_success() => {
                sqlx::query(
                    "UPDATE stk_requests SET status = 'Paid', result_code = $2, result_description = $3,
                         settled_by = 'Query', updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&a.result_code.0)
                .bind(&a.result_desc)
                .execute(&mut *tx)
                .await?;
                entry.status = "Paid (receipt from Pull Transactions)".into();
                paid = true;
            }
            (Ok((_, a)), _) => {
                sqlx::query(
                    "UPDATE stk_requests SET status = 'Failed', result_code = $2, result_description = $3,
                         settled_by = 'Query', updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&a.result_code.0)
                .bind(&a.result_desc)
                .execute(&mut *tx)
                .await?;
                entry.status = StkStatus::Failed.to_string();
            }
            (Err(e), _) if e.is_still_processing() => {
                entry.status = "Processing".into();
            }
            (Err(_), _) => {
                entry.status = "Error".into();
            }
        }
        match &res {
            Ok((raw, a)) => {
                entry.result_code = Some(a.result_code.0.clone());
                entry.result_description = Some(a.result_desc.clone());
                entry.raw = json!({"request": {"CheckoutRequestID": checkout}, "response": raw});
            }
            Err(e) => {
                entry.result_code = e.code().map(String::from);
                entry.result_description = Some(e.to_string());
                entry.raw =
                    json!({"request": {"CheckoutRequestID": checkout}, "response": e.body()});
            }
        }
        record(&mut tx, entry).await?;
        tx.commit().await?;
        if paid {
            m.pull_now.notify_one();
        }
    }
    Ok(())
}
