//! Partner commissions paid by B2C.
//!
//! A commission becomes payable once per converted referral (CRM's
//! `lead.converted` with `referredBy`) when the referred subscriber's first invoice
//! is Paid (the first of their invoices Billing reports Paid), at the partner's
//! `commissionRate` in force at the conversion (from Core's partner snapshots).
//! With basis `flat` (the default, as SPEC 3.1 and Core hold it: KES per converted
//! referral) the amount is the rate; with `percent` it is rate % of that invoice's
//! amount. The exact amount is kept; B2C takes whole KES, so the payout is that
//! amount rounded half away from zero (1500.49 -> 1500, 1500.50 -> 1501).
//!
//! States: Pending Approval -> (Admin approves, or automatically up to
//! `ISP_MPESA_COMMISSION_AUTO_APPROVE_UP_TO`) Approved -> B2C accepted: Sent ->
//! the result callback: Paid (with the receipt) or Failed (with the reason; Admin
//! may retry, as a new attempt). A queue-timeout, no answer from Daraja, or no
//! result after `ISP_MPESA_B2C_STATUS_AFTER_SECONDS` leaves it Sent and the
//! Transaction Status API settles it. Each attempt sends its own
//! OriginatorConversationID (`<commission id>-<attempt>`); a repeated request
//! for the same attempt (a crash between sending and recording, two replicas) is
//! refused by Daraja as a duplicate, so it cannot pay twice. Amounts outside KES
//! 10..250,000 are refused before anything is sent (B2C cannot be reversed).
//!
//! Paid publishes `mpesa.commission.paid` through the outbox in the transaction
//! that marks it; Billing records the expense.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use isp_events::options::PartnerStatus;
use isp_events::payloads::MpesaCommissionPaid;
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::collection::{parse_id, Collection, Operation};
use isp_platform::error::FieldError;
use isp_platform::{ApiError, ApiResult};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};
use sqlx::PgConnection;
use utoipa::OpenApi;
use uuid::Uuid;

use crate::daraja::{DarajaError, ResultBody, ResultInner};
use crate::status::CommissionStatus;
use crate::txlog::{record, Entry};
use crate::Mpesa;

/// Daraja's B2C limits, whole KES.
pub const B2C_MIN: i64 = 10;
pub const B2C_MAX: i64 = 250_000;

/// How a commission is priced from the partner's `commissionRate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The rate is KES per converted referral.
    Flat,
    /// The rate is a percentage of the first paid invoice's amount.
    Percent,
}

impl Basis {
    pub fn parse(s: &str) -> anyhow::Result<Basis> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flat" => Ok(Basis::Flat),
            "percent" => Ok(Basis::Percent),
            other => {
                anyhow::bail!("ISP_MPESA_COMMISSION_BASIS must be flat or percent, not {other:?}")
            }
        }
    }
    fn label(self) -> &'static str {
        match self {
            Basis::Flat => "Flat",
            Basis::Percent => "Percent",
        }
    }
}

/// The commission settings the consumers need.
#[derive(Debug, Clone)]
pub struct Rules {
    pub basis: Basis,
    /// Approve automatically when the payout is at most this (KES); None: never.
    pub auto_approve_up_to: Option<Decimal>,
}

/// The exact commission and the whole-KES payout.
pub fn price(basis: Basis, rate: Decimal, invoice_amount: Decimal) -> (Decimal, Decimal) {
    let exact = match basis {
        Basis::Flat => rate,
        Basis::Percent => (rate * invoice_amount / Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
    };
    (exact, payout_of(exact))
}

/// Whole KES, half away from zero.
pub fn payout_of(exact: Decimal) -> Decimal {
    exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
}

// ---------------------------------------------------------------------------
// becoming payable (called by the consumers, in the event's transaction)
// ---------------------------------------------------------------------------

/// A converted referral (lead.converted with a referring partner).
pub async fn referral(
    tx: &mut PgConnection,
    rules: &Rules,
    lead: Uuid,
    partner: Uuid,
    subscriber: Uuid,
    converted_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO referrals (lead_id, partner_id, subscriber_id, converted_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(lead)
    .bind(partner)
    .bind(subscriber)
    .bind(converted_at)
    .execute(&mut *tx)
    .await?;
    ensure(tx, rules, lead).await
}

/// An invoice of `subscriber` is Paid: their referrals may now earn.
pub async fn invoice_paid(
    tx: &mut PgConnection,
    rules: &Rules,
    subscriber: Uuid,
) -> anyhow::Result<()> {
    let leads: Vec<Uuid> = sqlx::query_scalar(
        "SELECT lead_id FROM referrals r WHERE subscriber_id = $1
           AND NOT EXISTS (SELECT 1 FROM commissions c WHERE c.lead_id = r.lead_id)",
    )
    .bind(subscriber)
    .fetch_all(&mut *tx)
    .await?;
    for lead in leads {
        ensure(tx, rules, lead).await?;
    }
    Ok(())
}

/// A partner snapshot: its rate history, then referrals that waited for it.
pub async fn partner_seen(
    tx: &mut PgConnection,
    rules: &Rules,
    partner: Uuid,
    at: DateTime<Utc>,
    rate: Decimal,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO partner_rates (partner_id, valid_from, commission_rate) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(partner)
    .bind(at)
    .bind(rate)
    .execute(&mut *tx)
    .await?;
    let leads: Vec<Uuid> = sqlx::query_scalar(
        "SELECT lead_id FROM referrals r WHERE partner_id = $1
           AND NOT EXISTS (SELECT 1 FROM commissions c WHERE c.lead_id = r.lead_id)",
    )
    .bind(partner)
    .fetch_all(&mut *tx)
    .await?;
    for lead in leads {
        ensure(tx, rules, lead).await?;
    }
    Ok(())
}

/// Creates the referral's commission once everything it needs is known (the
/// referral, the first paid invoice, the partner's rate at conversion); the
/// unique lead makes it once whichever event completes the picture.
async fn ensure(tx: &mut PgConnection, rules: &Rules, lead: Uuid) -> anyhow::Result<()> {
    let Some((partner, subscriber, converted_at)): Option<(Uuid, Uuid, DateTime<Utc>)> =
        sqlx::query_as(
            "SELECT partner_id, subscriber_id, converted_at FROM referrals r WHERE lead_id = $1
               AND NOT EXISTS (SELECT 1 FROM commissions c WHERE c.lead_id = r.lead_id)",
        )
        .bind(lead)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(());
    };
    let Some((invoice, invoice_amount)): Option<(Uuid, Decimal)> = sqlx::query_as(
        "SELECT id, amount_due FROM invoices WHERE subscriber_id = $1 AND status = 'Paid'
         ORDER BY due_date, invoice_number LIMIT 1",
    )
    .bind(subscriber)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    // The rate in force at the conversion (the earliest known if all are later).
    let rate: Option<Decimal> = sqlx::query_scalar(
        "SELECT commission_rate FROM partner_rates WHERE partner_id = $1
         ORDER BY (valid_from <= $2) DESC,
                  CASE WHEN valid_from <= $2 THEN valid_from END DESC, valid_from ASC
         LIMIT 1",
    )
    .bind(partner)
    .bind(converted_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(rate) = rate else {
        tracing::info!(%lead, %partner, "commission waits for the partner's snapshot");
        return Ok(());
    };
    let (amount, payout) = price(rules.basis, rate, invoice_amount);
    if amount <= Decimal::ZERO {
        tracing::info!(%lead, %partner, "no commission: the partner's rate is 0");
        return Ok(());
    }
    let id = Uuid::now_v7();
    let auto = match rules.auto_approve_up_to {
        Some(limit) if payout <= limit => {
            let partner_row = partner_of(tx, partner).await?;
            payable_errors(payout, partner_row.as_ref()).is_empty()
                && partner_row.is_some_and(|p| p.status == PartnerStatus::Active)
        }
        _ => false,
    };
    let inserted = sqlx::query(
        "INSERT INTO commissions (id, lead_id, partner_id, subscriber_id, invoice_id, invoice_amount,
             commission_rate, basis, amount, payout_amount, status, attempts, originator_conversation_id,
             approved_by, approved_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
             CASE WHEN $11 THEN 'Approved' ELSE 'Pending Approval' END,
             CASE WHEN $11 THEN 1 ELSE 0 END,
             CASE WHEN $11 THEN $1::text || '-1' END,
             CASE WHEN $11 THEN 'Automatic' END,
             CASE WHEN $11 THEN now() END)
         ON CONFLICT (lead_id) DO NOTHING",
    )
    .bind(id)
    .bind(lead)
    .bind(partner)
    .bind(subscriber)
    .bind(invoice)
    .bind(invoice_amount)
    .bind(rate)
    .bind(rules.basis.label())
    .bind(amount)
    .bind(payout)
    .bind(auto)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::info!(commission = %id, %lead, %partner, %amount, auto, "commission payable");
    }
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct PartnerRow {
    full_name: String,
    mpesa_number: String,
    status: PartnerStatus,
    deleted: bool,
}

async fn partner_of(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<PartnerRow>> {
    sqlx::query_as("SELECT full_name, mpesa_number, status, deleted FROM partners WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
}

/// What Daraja would refuse, named by field, before anything is sent.
fn payable_errors(payout: Decimal, partner: Option<&PartnerRow>) -> Vec<FieldError> {
    let mut errors = vec![];
    let whole = payout.to_i64().unwrap_or(i64::MAX);
    if !(B2C_MIN..=B2C_MAX).contains(&whole) {
        errors.push(FieldError::new(
            "payoutAmount",
            format!("KES {payout} is outside what M-Pesa B2C pays (KES {B2C_MIN} to {B2C_MAX})."),
        ));
    }
    match partner {
        None => errors.push(FieldError::new(
            "partner",
            "The partner is not known to M-Pesa yet: try again shortly.",
        )),
        Some(p) if p.deleted => errors.push(FieldError::new("partner", "The partner was deleted.")),
        Some(p) => {
            if let Err(e) = crate::stk::kenyan_mobile(&p.mpesa_number) {
                errors.push(FieldError::new(
                    "partner",
                    format!("The partner's mpesaNumber: {e}"),
                ));
            }
        }
    }
    errors
}

// ---------------------------------------------------------------------------
// approving and retrying (Admin)
// ---------------------------------------------------------------------------

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

pub(crate) fn routes(m: Arc<Mpesa>, coll: Arc<Collection>) -> Router {
    Router::new()
        .route("/api/mpesa/commissions/{id}/approve", post(approve))
        .route("/api/mpesa/commissions/{id}/retry", post(retry))
        .with_state(St { m, coll })
}

#[derive(OpenApi)]
#[openapi(paths(approve, retry))]
struct Doc;

pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// Approves a Pending Approval commission (Admin) and sends it by B2C to the
/// partner's mpesaNumber. The payout (whole KES) must be KES 10 to 250,000 and
/// the partner's number a Kenyan mobile number: what Daraja would refuse is
/// refused here, before anything is sent. The answer's doc is Sent when Daraja
/// accepted the payment (the result callback then marks it Paid or Failed), or
/// Failed with Daraja's reason.
#[utoipa::path(post, path = "/api/mpesa/commissions/{id}/approve", tag = "commissions",
    params(("id" = Uuid, Path, description = "The commission")),
    responses(
        (status = 200, description = "{doc: the commission (Sent, or Failed with Daraja's reason), message}"),
        (status = 400, description = "Every reason named: id (not an id), payoutAmount (outside KES 10-250,000), partner (unknown, deleted, or its mpesaNumber is not a Kenyan mobile number)"),
        (status = 401), (status = 403, description = "Only Admin approves"),
        (status = 404, description = "No such commission"),
        (status = 409, description = "The commission is not Pending Approval")))]
async fn approve(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Action("approve"))?;
    let id = parse_id(&id)?;
    start_attempt(&s, &p, id, CommissionStatus::PendingApproval).await
}

/// Sends a Failed commission again (Admin), as a new attempt with its own
/// OriginatorConversationID. Only a Failed one: Daraja reported that the money
/// did not move.
#[utoipa::path(post, path = "/api/mpesa/commissions/{id}/retry", tag = "commissions",
    params(("id" = Uuid, Path, description = "The commission")),
    responses(
        (status = 200, description = "{doc: the commission (Sent, or Failed with Daraja's reason), message}"),
        (status = 400, description = "Every reason named: id (not an id), payoutAmount (outside KES 10-250,000), partner (unknown, deleted, or its mpesaNumber is not a Kenyan mobile number)"),
        (status = 401), (status = 403, description = "Only Admin retries"),
        (status = 404, description = "No such commission"),
        (status = 409, description = "The commission is not Failed")))]
async fn retry(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.coll.authorize(&p, Operation::Action("retry"))?;
    let id = parse_id(&id)?;
    start_attempt(&s, &p, id, CommissionStatus::Failed).await
}

/// From `from` to Approved with a new attempt, then sends it.
async fn start_attempt(
    s: &St,
    p: &Principal,
    id: Uuid,
    from: CommissionStatus,
) -> ApiResult<Json<Value>> {
    let mut tx = s.m.ctx.pool.begin().await?;
    let row: Option<(CommissionStatus, Decimal, Uuid)> = sqlx::query_as(
        "SELECT status, payout_amount, partner_id FROM commissions WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, payout, partner)) = row else {
        return Err(ApiError::not_found("Commission"));
    };
    if status != from {
        return Err(ApiError::conflict_field(
            "status",
            format!("The commission is {status}; only a {from} one can be sent this way."),
        ));
    }
    let partner_row = partner_of(&mut tx, partner).await?;
    let errors = payable_errors(payout, partner_row.as_ref());
    if !errors.is_empty() {
        return Err(ApiError::BadRequest(errors));
    }
    sqlx::query(
        "UPDATE commissions SET status = $3, attempts = attempts + 1,
             originator_conversation_id = id::text || '-' || (attempts + 1),
             approved_by = $2, approved_at = now(), result_code = NULL, result_description = NULL,
             conversation_id = NULL, send_claimed_until = NULL, next_check_at = NULL,
             status_queries = 0, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(p.label())
    .bind(CommissionStatus::Approved)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Err(e) = send(&s.m, id).await {
        tracing::error!(commission = %id, "sending the commission: {e:#}");
    }
    let mut conn = s.m.ctx.pool.acquire().await?;
    let doc = s
        .coll
        .fetch(&mut conn, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Commission"))?;
    let message = match doc["status"].as_str().and_then(CommissionStatus::parse) {
        Some(CommissionStatus::Sent) => {
            "Approved and sent: M-Pesa's result marks it Paid or Failed.".to_string()
        }
        Some(CommissionStatus::Paid) => "Approved and paid.".to_string(),
        Some(CommissionStatus::Failed) => format!(
            "Approved, but M-Pesa refused the payment: {}",
            doc["resultDescription"]
                .as_str()
                .unwrap_or("no reason given")
        ),
        _ => "Approved; it is sent shortly.".to_string(),
    };
    Ok(Json(
        json!({"doc": s.coll.present(p, &doc), "message": message}),
    ))
}

// ---------------------------------------------------------------------------
// sending
// ---------------------------------------------------------------------------

/// Sends an Approved commission's current attempt by B2C, once: the sender
/// claims it first (no two senders at once), and records Daraja's answer with the
/// state it leads to in one transaction.
pub(crate) async fn send(m: &Mpesa, id: Uuid) -> anyhow::Result<()> {
    let claimed: Option<(String, Decimal, Uuid)> = sqlx::query_as(
        "UPDATE commissions SET send_claimed_until = now() + interval '2 minutes'
         WHERE id = $1 AND status = 'Approved'
           AND (send_claimed_until IS NULL OR send_claimed_until < now())
         RETURNING originator_conversation_id, payout_amount, partner_id",
    )
    .bind(id)
    .fetch_optional(&m.ctx.pool)
    .await?;
    let Some((ocid, payout, partner)) = claimed else {
        return Ok(());
    };
    let mut conn = m.ctx.pool.acquire().await?;
    let partner_row = partner_of(&mut conn, partner).await?;
    drop(conn);
    let errors = payable_errors(payout, partner_row.as_ref());
    if !errors.is_empty() {
        let why = errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        sqlx::query(
            "UPDATE commissions SET status = 'Failed', result_code = 'Not sent', result_description = $2,
                 send_claimed_until = NULL, updated_at = now()
             WHERE id = $1 AND status = 'Approved'",
        )
        .bind(id)
        .bind(why)
        .execute(&m.ctx.pool)
        .await?;
        return Ok(());
    }
    let phone = crate::stk::kenyan_mobile(&partner_row.expect("checked").mpesa_number)
        .map_err(anyhow::Error::msg)?;
    let msisdn = isp_platform::phone::msisdn(&phone);
    let whole = payout.to_i64().expect("checked within limits");
    let (raw_req, res) = m
        .daraja
        .b2c(
            &ocid,
            whole,
            &msisdn,
            "Partner referral commission",
            &m.hook("b2c/result"),
            &m.hook("b2c/timeout"),
        )
        .await;
    let mut tx = m.ctx.pool.begin().await?;
    let (status, current): (CommissionStatus, Option<String>) = sqlx::query_as(
        "SELECT status, originator_conversation_id FROM commissions WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    // The result callback may have come before this answer was recorded.
    let open = status == CommissionStatus::Approved && current.as_deref() == Some(ocid.as_str());
    let after = m.opts.b2c_status_after.as_secs_f64();
    let mut entry = Entry {
        kind: "B2C Request",
        originator_conversation_id: Some(ocid.clone()),
        amount: Some(payout),
        phone: Some(msisdn.clone()),
        ..Default::default()
    };
    let sent = |conversation: Option<String>, check_in: f64, note: Option<String>| {
        sqlx::query(
            "UPDATE commissions SET status = 'Sent', conversation_id = COALESCE($2, conversation_id),
                 phone = $3, sent_at = now(), next_check_at = now() + make_interval(secs => $4),
                 result_description = $5, send_claimed_until = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(conversation)
        .bind(phone.clone())
        .bind(check_in)
        .bind(note)
    };
    let failed = |code: String, desc: String| {
        sqlx::query(
            "UPDATE commissions SET status = 'Failed', phone = $2, result_code = $3, result_description = $4,
                 send_claimed_until = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(phone.clone())
        .bind(code)
        .bind(desc)
    };
    match &res {
        Ok(v) if text(&v["ResponseCode"]) == "0" => {
            let conv = text(&v["ConversationID"]);
            entry.conversation_id = Some(conv.clone()).filter(|c| !c.is_empty());
            entry.status = "Accepted".into();
            entry.result_code = Some("0".into());
            entry.result_description = Some(text(&v["ResponseDescription"]));
            if open {
                sent(entry.conversation_id.clone(), after, None)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(v) => {
            let code = text(&v["ResponseCode"]);
            let desc = text(&v["ResponseDescription"]);
            entry.status = "Refused".into();
            entry.result_code = Some(code.clone());
            entry.result_description = Some(desc.clone());
            if open {
                failed(code, desc).execute(&mut *tx).await?;
            }
        }
        Err(e) if e.is_duplicate_originator() => {
            // Daraja has this attempt already: its result (or the status query) settles it.
            entry.status = "Duplicate (Daraja has this attempt)".into();
            entry.result_code = e.code().map(String::from);
            entry.result_description = Some(e.to_string());
            if open {
                sent(None, 0.0, None).execute(&mut *tx).await?;
            }
        }
        Err(e @ (DarajaError::Transport(_) | DarajaError::Api { .. })) if unknown_outcome(e) => {
            // It may or may not have reached Daraja (no answer, or a gateway's
            // 5xx without Daraja's error body): never assume it failed.
            let t = e.to_string();
            entry.status = "No answer".into();
            entry.result_description = Some(t.clone());
            if open {
                sent(
                    None,
                    after,
                    Some(format!(
                        "No answer from Daraja ({t}); Transaction Status settles it."
                    )),
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        Err(e) => {
            let code = e.code().unwrap_or("refused").to_string();
            entry.status = "Refused".into();
            entry.result_code = Some(code.clone());
            entry.result_description = Some(e.to_string());
            if open {
                failed(code, e.to_string()).execute(&mut *tx).await?;
            }
        }
    }
    let response = match &res {
        Ok(v) => v.clone(),
        Err(e) => e.body(),
    };
    entry.raw = json!({"request": raw_req, "response": response});
    record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether a failed B2C request may still have reached Daraja: no answer at all,
/// or a 5xx that is not Daraja's own error body (a proxy's timeout page).
fn unknown_outcome(e: &DarajaError) -> bool {
    match e {
        DarajaError::Transport(_) => true,
        DarajaError::Api { status, code, .. } => *status >= 500 && code.is_empty(),
        DarajaError::Config(_) => false,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------
// callbacks: B2C result, queue timeout, Transaction Status result
// ---------------------------------------------------------------------------

/// Which callback a body came to.
#[derive(Debug, Clone, Copy)]
pub enum Callback {
    Result,
    Timeout,
    /// The Transaction Status result for this commission.
    Status(Uuid),
}

/// What a result says about the money.
enum Outcome {
    Paid {
        receipt: String,
        amount: Option<Decimal>,
    },
    Failed {
        code: String,
        desc: String,
    },
    Unknown(String),
}

fn b2c_outcome(r: &ResultInner) -> Outcome {
    match &r.result_code {
        Some(c) if c.is_success() => {
            let receipt = r
                .param("TransactionReceipt")
                .or_else(|| Some(r.transaction_id.clone()).filter(|t| !t.is_empty()));
            match receipt {
                Some(receipt) => Outcome::Paid {
                    receipt,
                    amount: r
                        .param("TransactionAmount")
                        .and_then(|a| a.parse::<Decimal>().ok()),
                },
                None => Outcome::Unknown("Success without a receipt".into()),
            }
        }
        Some(c) => Outcome::Failed {
            code: c.0.clone(),
            desc: r.result_desc.clone(),
        },
        None => Outcome::Unknown("No ResultCode".into()),
    }
}

fn status_outcome(r: &ResultInner, queries: i32) -> Outcome {
    match &r.result_code {
        Some(c) if c.is_success() => {
            let st = r.param("TransactionStatus").unwrap_or_default();
            match st.as_str() {
                "Completed" => match r
                    .param("ReceiptNo")
                    .or_else(|| Some(r.transaction_id.clone()).filter(|t| !t.is_empty()))
                {
                    Some(receipt) => Outcome::Paid {
                        receipt,
                        amount: r.param("Amount").and_then(|a| a.parse::<Decimal>().ok()),
                    },
                    None => Outcome::Unknown("Completed without a receipt".into()),
                },
                "Failed" | "Declined" | "Cancelled" | "Expired" => Outcome::Failed {
                    code: "Transaction Status".into(),
                    desc: format!("Transaction Status: {st}"),
                },
                other => Outcome::Unknown(format!("Transaction Status: {other:?}")),
            }
        }
        // "The OriginalConversationID or TransactionID is invalid": Daraja does not
        // know the attempt. It may not have registered it yet, so only after
        // several answers alike is it Failed (and may be retried).
        Some(c) if c.0 == "R000002" && queries >= 5 => Outcome::Failed {
            code: c.0.clone(),
            desc: format!("Daraja has no such payment: {}", r.result_desc),
        },
        Some(c) => Outcome::Unknown(format!("{} {}", c.0, r.result_desc)),
        None => Outcome::Unknown("No ResultCode".into()),
    }
}

/// A B2C result, a queue timeout or a Transaction Status result: recorded with
/// its effect in one transaction.
pub(crate) async fn callback(m: &Mpesa, which: Callback, body: &[u8]) -> anyhow::Result<()> {
    let (raw, _) = crate::hooks::raw_of(body);
    let kind = match which {
        Callback::Result => "B2C Result",
        Callback::Timeout => "B2C Timeout",
        Callback::Status(_) => "Transaction Status Result",
    };
    let parsed = serde_json::from_value::<ResultBody>(raw.clone())
        .ok()
        .map(|b| b.result);
    let mut tx = m.ctx.pool.begin().await?;
    let Some(r) = parsed else {
        record(
            &mut tx,
            Entry {
                kind,
                status: "Malformed".into(),
                raw,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    };
    // The commission: by our OriginatorConversationID (B2C), by the path (status;
    // its result carries the original id as a parameter).
    let original = match which {
        Callback::Status(_) => r.param("OriginatorConversationID"),
        _ => Some(r.originator_conversation_id.clone()).filter(|s| !s.is_empty()),
    };
    type Row = (Uuid, CommissionStatus, Option<String>, i32);
    let row: Option<Row> = match which {
        Callback::Status(id) => {
            sqlx::query_as(
                "SELECT id, status, originator_conversation_id, status_queries FROM commissions
                 WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        _ => {
            sqlx::query_as(
                "SELECT id, status, originator_conversation_id, status_queries FROM commissions
                 WHERE originator_conversation_id = $1 FOR UPDATE",
            )
            .bind(&original)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let mut entry = Entry {
        kind,
        conversation_id: Some(r.conversation_id.clone()).filter(|s| !s.is_empty()),
        originator_conversation_id: original.clone(),
        result_code: r.result_code.as_ref().map(|c| c.0.clone()),
        result_description: Some(r.result_desc.clone()),
        ..Default::default()
    };
    let status = match row {
        None => {
            tracing::warn!(kind, "B2C callback for a payment we did not send");
            "Unknown request".to_string()
        }
        Some((id, status, current, queries)) => {
            let stale = match (&original, &current) {
                (Some(o), Some(c)) => o != c,
                _ => false,
            };
            if stale {
                tracing::warn!(commission = %id, kind, "B2C callback for an earlier attempt");
                "Earlier attempt (not applied)".to_string()
            } else if !status.in_flight() {
                format!("Settled already ({status})")
            } else {
                match which {
                    Callback::Timeout => {
                        sqlx::query(
                            "UPDATE commissions SET next_check_at = now(), updated_at = now() WHERE id = $1",
                        )
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        "Outcome unknown (Transaction Status settles it)".to_string()
                    }
                    Callback::Result => apply(&mut tx, m, id, b2c_outcome(&r), &mut entry).await?,
                    Callback::Status(_) => {
                        apply(&mut tx, m, id, status_outcome(&r, queries), &mut entry).await?
                    }
                }
            }
        }
    };
    entry.status = status;
    entry.raw = raw;
    record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Paid (publishing `mpesa.commission.paid`) or Failed; Unknown changes nothing.
async fn apply(
    tx: &mut PgConnection,
    _m: &Mpesa,
    id: Uuid,
    outcome: Outcome,
    entry: &mut Entry,
) -> anyhow::Result<String> {
    match outcome {
        Outcome::Paid { receipt, amount } => {
            type Paid = (Uuid, Uuid, Uuid, Decimal, Option<String>, DateTime<Utc>);
            let (partner, lead, subscriber, payout, phone, paid_at): Paid = sqlx::query_as(
                "UPDATE commissions SET status = 'Paid', receipt = $2, paid_amount = COALESCE($3, payout_amount),
                     paid_at = now(), result_code = '0', result_description = 'Paid',
                     send_claimed_until = NULL, updated_at = now()
                 WHERE id = $1
                 RETURNING partner_id, lead_id, subscriber_id, paid_amount, phone, paid_at",
            )
            .bind(id)
            .bind(&receipt)
            .bind(amount)
            .fetch_one(&mut *tx)
            .await?;
            let p = partner_of(tx, partner).await?;
            isp_events::outbox::enqueue(
                tx,
                "mpesa",
                &MpesaCommissionPaid {
                    commission: id,
                    partner,
                    partner_name: p.as_ref().map(|p| p.full_name.clone()).unwrap_or_default(),
                    amount: payout,
                    receipt: receipt.clone(),
                    phone: phone.unwrap_or_default(),
                    lead: Some(lead),
                    subscriber: Some(subscriber),
                    paid_at,
                },
            )
            .await?;
            entry.receipt = Some(receipt);
            entry.amount = Some(payout);
            Ok(CommissionStatus::Paid.to_string())
        }
        Outcome::Failed { code, desc } => {
            sqlx::query(
                "UPDATE commissions SET status = 'Failed', result_code = $2, result_description = $3,
                     send_claimed_until = NULL, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&code)
            .bind(&desc)
            .execute(&mut *tx)
            .await?;
            Ok(CommissionStatus::Failed.to_string())
        }
        Outcome::Unknown(why) => Ok(format!("No outcome yet: {why}")),
    }
}

// ---------------------------------------------------------------------------
// the worker: Approved ones not sent (auto-approved, or a crash between approval
// and sending), Sent ones without a result (Transaction Status)
// ---------------------------------------------------------------------------

pub(crate) fn spawn_worker(m: Arc<Mpesa>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = m.ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(m.opts.tick) => {}
            }
            if let Err(e) = send_due(&m).await {
                tracing::warn!("commission send pass: {e:#}");
            }
            if let Err(e) = check_due(&m).await {
                tracing::warn!("commission status pass: {e:#}");
            }
        }
    });
}

async fn send_due(m: &Mpesa) -> anyhow::Result<()> {
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM commissions WHERE status = 'Approved'
           AND (send_claimed_until IS NULL OR send_claimed_until < now())
         ORDER BY approved_at LIMIT 20",
    )
    .fetch_all(&m.ctx.pool)
    .await?;
    for id in due {
        send(m, id).await?;
    }
    Ok(())
}

async fn check_due(m: &Mpesa) -> anyhow::Result<()> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE commissions SET status_queries = status_queries + 1,
             next_check_at = now() + make_interval(secs => $1 * power(2, LEAST(status_queries, 6)))
         WHERE id IN (SELECT id FROM commissions WHERE status = 'Sent' AND next_check_at <= now()
                      ORDER BY next_check_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING id, originator_conversation_id",
    )
    .bind(m.opts.b2c_status_after.as_secs_f64().max(1.0))
    .fetch_all(&m.ctx.pool)
    .await?;
    for (id, ocid) in due {
        let (raw_req, res) = m
            .daraja
            .transaction_status(
                &ocid,
                &m.hook(&format!("b2c/status/{id}")),
                &m.hook("b2c/timeout"),
            )
            .await;
        let mut tx = m.ctx.pool.begin().await?;
        let (status, code, desc, response) = match &res {
            Ok(v) => (
                "Accepted".to_string(),
                Some(text(&v["ResponseCode"])),
                Some(text(&v["ResponseDescription"])),
                v.clone(),
            ),
            Err(e) => (
                "Error".to_string(),
                e.code().map(String::from),
                Some(e.to_string()),
                e.body(),
            ),
        };
        record(
            &mut tx,
            Entry {
                kind: "Transaction Status",
                originator_conversation_id: Some(ocid.clone()),
                status,
                result_code: code,
                result_description: desc,
                raw: json!({"request": raw_req, "response": response}),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn flat_commissions_are_the_rate_and_pay_whole_shillings() {
        assert_eq!(
            price(Basis::Flat, d("1500"), d("2999")),
            (d("1500"), d("1500"))
        );
        assert_eq!(price(Basis::Flat, d("1500.49"), d("1")).1, d("1500"));
        assert_eq!(price(Basis::Flat, d("1500.50"), d("1")).1, d("1501"));
    }

    #[test]
    fn percent_commissions_are_exact_then_rounded_for_b2c() {
        // 12.5% of 2999.99 = 374.99875 -> 375.00 exact (2 dp), 375 paid
        assert_eq!(
            price(Basis::Percent, d("12.5"), d("2999.99")),
            (d("375.00"), d("375"))
        );
        // 10% of 1234.50 = 123.45 -> 123
        assert_eq!(
            price(Basis::Percent, d("10"), d("1234.50")),
            (d("123.45"), d("123"))
        );
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let p = PartnerRow {
            full_name: "A".into(),
            mpesa_number: "0712345678".into(),
            status: PartnerStatus::Active,
            deleted: false,
        };
        assert!(payable_errors(d("10"), Some(&p)).is_empty());
        assert!(payable_errors(d("250000"), Some(&p)).is_empty());
        assert_eq!(
            payable_errors(d("9"), Some(&p))[0].path.as_deref(),
            Some("payoutAmount")
        );
        assert_eq!(payable_errors(d("250001"), Some(&p)).len(), 1);
        let bad = PartnerRow {
            mpesa_number: "12".into(),
            ..p
        };
        assert_eq!(payable_errors(d("5"), Some(&bad)).len(), 2);
        assert_eq!(payable_errors(d("50"), None).len(), 1);
    }
}
