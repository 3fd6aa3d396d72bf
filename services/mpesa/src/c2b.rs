//! C2B paybill: customers pay from their phone with their account number.
//! Validation (off on most paybills until Safaricom enables it) accepts an account
//! number that names a subscriber, or everything when configured; confirmation is
//! the gate that must be right: always acknowledged, credited once per TransID.
//! Pull Transactions (last 48 hours) on a schedule recovers confirmations that
//! never came, crediting only receipts not yet seen.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Timelike;
use isp_platform::auth::{HasKeys, Keys, Principal, Role, Roles};
use isp_platform::{ApiError, ApiResult};
use serde_json::{json, Value};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::credit::{credit, subscriber_by_account, subscriber_by_payer, Credit};
use crate::daraja::{c2b_accept, c2b_reject, C2bBody, PulledTransaction};
use crate::txlog::{record, Entry};
use crate::Mpesa;

#[derive(Clone)]
struct St(Arc<Mpesa>);

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.0.ctx.keys
    }
}

pub fn routes(m: Arc<Mpesa>) -> Router {
    Router::new()
        .route("/api/mpesa/c2b/register", post(register_route))
        .route("/api/mpesa/c2b/pull", post(pull_route))
        .with_state(St(m))
}

#[derive(OpenApi)]
#[openapi(paths(register_route, pull_route))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

const ADMIN: Roles = Roles::of(&[Role::Admin]);

/// Registers the paybill's validation and confirmation URLs with Daraja (Admin).
/// Done at start too; registering again is harmless.
#[utoipa::path(post, path = "/api/mpesa/c2b/register", tag = "transactions",
    responses((status = 200, description = "{message, response: Daraja's answer}"),
        (status = 401), (status = 403), (status = 503, description = "Daraja refused or is unreachable")))]
async fn register_route(State(St(m)): State<St>, p: Principal) -> ApiResult<Json<Value>> {
    p.require_roles(ADMIN)?;
    let r = register(&m).await.map_err(ApiError::Unavailable)?;
    Ok(Json(
        json!({"message": "C2B URLs registered.", "response": r}),
    ))
}

/// Runs Pull Transactions now over the last 48 hours (Admin), crediting
/// receipts not yet seen.
#[utoipa::path(post, path = "/api/mpesa/c2b/pull", tag = "transactions",
    responses((status = 200, description = "{pulled: rows Daraja returned, credited: new receipts}"),
        (status = 401), (status = 403), (status = 503, description = "Daraja refused or is unreachable")))]
async fn pull_route(State(St(m)): State<St>, p: Principal) -> ApiResult<Json<Value>> {
    p.require_roles(ADMIN)?;
    let (pulled, credited) = pull_once(&m)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({"pulled": pulled, "credited": credited})))
}

pub(crate) async fn register(m: &Mpesa) -> Result<Value, String> {
    let (raw_req, res) = m
        .daraja
        .c2b_register(&m.hook("c2b/validation"), &m.hook("c2b/confirmation"))
        .await;
    let (status, code, desc, body) = match &res {
        Ok(v) => (
            "Registered",
            v["ResponseCode"].as_str().map(String::from),
            v["ResponseDescription"].as_str().map(String::from),
            v.clone(),
        ),
        Err(e) => (
            "Refused",
            e.code().map(String::from),
            Some(e.to_string()),
            e.body(),
        ),
    };
    let mut req = raw_req;
    // The URLs carry the path token: keep it out of the log.
    for k in ["ConfirmationURL", "ValidationURL"] {
        if let Some(u) = req[k].as_str() {
            req[k] = json!(u.replace(&m.token, "<token>"));
        }
    }
    let logged = async {
        let mut tx = m.ctx.pool.begin().await?;
        record(
            &mut tx,
            Entry {
                kind: "C2B Register",
                status: status.into(),
                result_code: code,
                result_description: desc,
                raw: json!({"request": req, "response": body}),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = logged {
        tracing::warn!("recording the C2B registration: {e:#}");
    }
    res.map_err(|e| e.to_string())
}

pub(crate) fn spawn_workers(m: Arc<Mpesa>) {
    if m.opts.c2b_register_at_start {
        let m = m.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(5);
            loop {
                match register(&m).await {
                    Ok(_) => {
                        tracing::info!("C2B URLs registered with Daraja");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("C2B URL registration failed (retrying in {wait:?}): {e}")
                    }
                }
                tokio::select! {
                    _ = m.ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(600));
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let every = m
                .opts
                .pull_interval
                .unwrap_or(Duration::from_secs(365 * 24 * 3600));
            tokio::select! {
                _ = m.ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = m.pull_now.notified() => {}
            }
            if let Err(e) = pull_once(&m).await {
                tracing::warn!("Pull Transactions: {e:#}");
            }
        }
    });
}

/// The payer as we know them: the plain number when Daraja gave one, else its hash.
fn payer(b: &C2bBody) -> String {
    b.msisdn.trim().to_string()
}

pub(crate) async fn validation(m: &Mpesa, body: &Bytes) -> anyhow::Result<Value> {
    let (raw, _) = crate::hooks::raw_of(body);
    let parsed = serde_json::from_value::<C2bBody>(raw.clone()).ok();
    let mut tx = m.ctx.pool.begin().await?;
    let mut entry = Entry {
        kind: "C2B Validation",
        raw,
        ..Default::default()
    };
    let answer = match &parsed {
        None => {
            entry.status = "Rejected (malformed)".into();
            c2b_reject("C2B00016")
        }
        Some(b) => {
            entry.receipt = Some(b.trans_id.clone());
            entry.amount = b.amount();
            entry.phone = Some(payer(b));
            entry.account_reference = Some(b.bill_ref_number.clone());
            if b.amount().is_none() {
                entry.status = "Rejected (amount)".into();
                c2b_reject("C2B00013")
            } else if subscriber_by_account(&mut tx, &b.bill_ref_number)
                .await?
                .is_some()
            {
                entry.status = "Accepted".into();
                c2b_accept()
            } else if m.opts.c2b_accept_all {
                entry.status = "Accepted (unknown account, accept-all)".into();
                c2b_accept()
            } else {
                entry.status = "Rejected (unknown account)".into();
                c2b_reject("C2B00012")
            }
        }
    };
    entry.result_code = answer["ResultCode"].as_str().map(String::from);
    entry.result_description = answer["ResultDesc"].as_str().map(String::from);
    record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(answer)
}

pub(crate) async fn confirmation(m: &Mpesa, body: &Bytes) -> anyhow::Result<()> {
    let (raw, _) = crate::hooks::raw_of(body);
    let parsed = serde_json::from_value::<C2bBody>(raw.clone()).ok();
    let mut tx = m.ctx.pool.begin().await?;
    let mut entry = Entry {
        kind: "C2B Confirmation",
        raw,
        ..Default::default()
    };
    match parsed.as_ref().and_then(|b| b.amount().map(|a| (b, a))) {
        None => {
            entry.status = "Malformed".into();
            tracing::warn!("malformed C2B confirmation recorded");
        }
        Some((b, amount)) if b.trans_id.is_empty() => {
            entry.status = "Malformed (no TransID)".into();
            entry.amount = Some(amount);
        }
        Some((b, amount)) => {
            let c = c2b_credit(
                &mut tx,
                &b.trans_id,
                amount,
                &payer(b),
                b.payer_sha256(),
                &b.bill_ref_number,
                b.time().unwrap_or_else(chrono::Utc::now),
                "C2B Confirmation",
            )
            .await?;
            entry.status = if c.1 { "Credited" } else { "Duplicate" }.into();
            entry.receipt = Some(b.trans_id.clone());
            entry.amount = Some(amount);
            entry.phone = Some(payer(b));
            entry.account_reference = Some(c.0);
        }
    }
    record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Credits paybill money by its account number: (account reference used, new?).
#[allow(clippy::too_many_arguments)]
async fn c2b_credit(
    tx: &mut sqlx::PgConnection,
    receipt: &str,
    amount: rust_decimal::Decimal,
    phone: &str,
    sha: Option<String>,
    bill_ref: &str,
    time: chrono::DateTime<chrono::Utc>,
    found_by: &'static str,
) -> anyhow::Result<(String, bool)> {
    let sub = subscriber_by_account(tx, bill_ref).await?;
    let suggested = match (&sub, &sha) {
        (None, Some(h)) => subscriber_by_payer(tx, h).await?,
        _ => None,
    };
    let account = sub
        .as_ref()
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| bill_ref.trim().to_string());
    let new = credit(
        tx,
        &Credit {
            receipt: receipt.to_string(),
            amount,
            phone: phone.to_string(),
            phone_sha256: sha,
            account_reference: account.clone(),
            bill_ref_number: bill_ref.to_string(),
            subscriber: sub.map(|(id, _)| id),
            invoice: None,
            suggested_subscriber: suggested,
            source: "c2b",
            found_by,
            time,
        },
    )
    .await?;
    Ok((account, new))
}

/// Pull Transactions over the last 48 hours: (rows seen, receipts credited).
pub(crate) async fn pull_once(m: &Mpesa) -> anyhow::Result<(usize, usize)> {
    // Daraja's dates have whole seconds: the end is rounded up, or a receipt
    // from the current second would wait for the next pull.
    let now = chrono::Utc::now();
    let to = now.with_nanosecond(0).unwrap_or(now) + chrono::Duration::seconds(1);
    let from = now - chrono::Duration::hours(48);
    let res = m.daraja.pull_transactions(from, to).await;
    let rows = match res {
        Ok((_, rows)) => rows,
        Err(e) => {
            let mut tx = m.ctx.pool.begin().await?;
            record(
                &mut tx,
                Entry {
                    kind: "Pull Transactions",
                    status: "Error".into(),
                    result_code: e.code().map(String::from),
                    result_description: Some(e.to_string()),
                    raw: e.body(),
                    ..Default::default()
                },
            )
            .await?;
            tx.commit().await?;
            return Err(e.into());
        }
    };
    let seen: Vec<String> =
        sqlx::query_scalar("SELECT receipt FROM payments WHERE receipt = ANY($1)")
            .bind(
                rows.iter()
                    .map(|r| r.transaction_id.clone())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&m.ctx.pool)
            .await?;
    let seen: std::collections::HashSet<String> = seen.into_iter().collect();
    let mut credited = 0;
    for r in rows.iter().filter(|r| !seen.contains(&r.transaction_id)) {
        let mut tx = m.ctx.pool.begin().await?;
        let (status, new) = credit_pulled(&mut tx, r).await?;
        record(
            &mut tx,
            Entry {
                kind: "Pull Transactions",
                receipt: Some(r.transaction_id.clone()),
                amount: crate::daraja::money_of(&json!(r.amount)),
                phone: Some(r.msisdn.clone()),
                account_reference: Some(r.billreference.clone()),
                status,
                raw: json!({"transactionId": r.transaction_id, "trxDate": r.trx_date, "msisdn": r.msisdn,
                    "billreference": r.billreference, "amount": r.amount}),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        credited += usize::from(new);
    }
    if credited > 0 {
        tracing::info!(credited, "Pull Transactions recovered missed payments");
    }
    Ok((rows.len(), credited))
}

/// A pulled receipt not yet seen: an STK prompt's money when one matches (the
/// query found it paid, or its callback is late), else paybill money.
async fn credit_pulled(
    tx: &mut sqlx::PgConnection,
    r: &PulledTransaction,
) -> anyhow::Result<(String, bool)> {
    let Some(amount) = crate::daraja::money_of(&json!(r.amount)) else {
        return Ok(("Malformed (amount)".into(), false));
    };
    let time = r.time().unwrap_or_else(chrono::Utc::now);
    let msisdn = r.msisdn.trim().to_string();
    let stk: Option<(Uuid, Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, invoice_id, subscriber_id, account_reference FROM stk_requests
         WHERE status IN ('Pending', 'Paid') AND receipt IS NULL AND account_reference = $1 AND amount = $2
           AND ($3 = '' OR phone = '+' || $3)
         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(r.billreference.trim())
    .bind(amount)
    .bind(&msisdn)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, invoice, subscriber, account)) = stk {
        sqlx::query(
            "UPDATE stk_requests SET status = 'Paid', receipt = $2,
                 settled_by = COALESCE(settled_by, 'Pull Transactions'), updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&r.transaction_id)
        .execute(&mut *tx)
        .await?;
        let new = credit(
            tx,
            &Credit {
                receipt: r.transaction_id.clone(),
                amount,
                phone_sha256: (!msisdn.is_empty()).then(|| crate::daraja::msisdn_sha256(&msisdn)),
                phone: msisdn,
                account_reference: account.clone(),
                bill_ref_number: account,
                subscriber: Some(subscriber),
                invoice: Some(invoice),
                suggested_subscriber: None,
                source: "stk",
                found_by: "Pull Transactions",
                time,
            },
        )
        .await?;
        return Ok((if new { "Credited (STK)" } else { "Duplicate" }.into(), new));
    }
    let sha = (msisdn.len() == 12).then(|| crate::daraja::msisdn_sha256(&msisdn));
    let (_, new) = c2b_credit(
        tx,
        &r.transaction_id,
        amount,
        &msisdn,
        sha,
        &r.billreference,
        time,
        "Pull Transactions",
    )
    .await?;
    Ok((if new { "Credited (C2B)" } else { "Duplicate" }.into(), new))
}
