//! The reconciliation read for finance: `GET /api/mpesa/reconciliation?from=&to=`
//! (Admin, Billing Manager). For the M-Pesa receipts of the date range (by their
//! transaction time, in the ISP's time zone, both days included): each receipt
//! is in exactly one of two places, **matched** (Billing recorded a Payment on an
//! invoice with that receipt, as its `payment.received` told us) or
//! **unallocated** (no Payment on an invoice yet: an account number that names no
//! subscriber, kept in Billing's unallocated payments, or a receipt Billing has
//! not processed yet), so `matched.total + unallocated.total = receipts.total`
//! always. Commissions paid (money out by B2C, by the time Daraja paid them) are
//! listed beside, with those still on their way (Approved or Sent).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::error::FieldError;
use isp_platform::money::format as money;
use isp_platform::{ApiError, ApiResult};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::collections::FIN;
use crate::Mpesa;

/// The longest range one read covers.
const MAX_DAYS: i64 = 366;
/// The unallocated receipts listed (their count and total always cover all).
const MAX_LISTED: usize = 1000;

#[derive(Clone)]
struct St(Arc<Mpesa>);

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.0.ctx.keys
    }
}

pub fn routes(m: Arc<Mpesa>) -> Router {
    Router::new()
        .route("/api/mpesa/reconciliation", get(reconciliation))
        .with_state(St(m))
}

#[derive(OpenApi)]
#[openapi(paths(reconciliation))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

fn date_param(
    q: &HashMap<String, String>,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<NaiveDate> {
    match q.get(name).map(|s| s.trim()) {
        None | Some("") => {
            errors.push(FieldError::new(
                name,
                format!("{name} is required (YYYY-MM-DD)."),
            ));
            None
        }
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(FieldError::new(
                    name,
                    format!("{s:?} is not a date (YYYY-MM-DD)."),
                ));
                None
            }
        },
    }
}

#[derive(Default)]
struct Sum {
    count: i64,
    total: Decimal,
}

impl Sum {
    fn add(&mut self, amount: Decimal) {
        self.count += 1;
        self.total += amount;
    }
    fn json(&self) -> Value {
        json!({"count": self.count, "total": money(self.total)})
    }
}

/// Money in (receipts, each either matched to an invoice or unallocated) and
/// money out (commissions paid) for a date range (Admin, Billing Manager).
/// `from` and `to` are dates (YYYY-MM-DD) in the ISP's time zone, both included,
/// at most 366 days apart. Totals are exact decimal strings; `balanced` says
/// `matched + unallocated = receipts` (always true: each receipt is counted in
/// exactly one of them).
#[utoipa::path(get, path = "/api/mpesa/reconciliation", tag = "payments",
    params(("from" = chrono::NaiveDate, Query, description = "First day (YYYY-MM-DD)"),
           ("to" = chrono::NaiveDate, Query, description = "Last day (YYYY-MM-DD), included")),
    extensions(("x-rules" = json!(["to: not before from, and at most 366 days after it"]))),
    responses(
        (status = 200, description = "{from, to, receipts, matched, unallocated: {count, total}, bySource: {stk, c2b}, unallocatedReceipts: [{receipt, amount, accountReference, billRefNumber, transactionTime, suggestedSubscriber}], commissionsPaid, commissionsInFlight: {count, total}, net, balanced}"),
        (status = 400, description = "Every bad parameter named: from, to (missing, not a date, to before from, more than 366 days); unknown parameters"),
        (status = 401), (status = 403, description = "Admin and Billing Manager only")))]
async fn reconciliation(
    State(St(m)): State<St>,
    p: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    p.require(FIN, "mpesa.reconciliation.read")?;
    let mut errors = vec![];
    for k in q.keys() {
        if k != "from" && k != "to" {
            errors.push(FieldError::new(k.clone(), "Unknown parameter."));
        }
    }
    let from = date_param(&q, "from", &mut errors);
    let to = date_param(&q, "to", &mut errors);
    if let (Some(f), Some(t)) = (from, to) {
        if t < f {
            errors.push(FieldError::new("to", "to is before from."));
        } else if (t - f).num_days() >= MAX_DAYS {
            errors.push(FieldError::new(
                "to",
                format!("At most {MAX_DAYS} days in one read."),
            ));
        }
    }
    let (Some(from), Some(to)) = (from.filter(|_| errors.is_empty()), to) else {
        return Err(ApiError::BadRequest(errors));
    };
    let tz = m.ctx.config.timezone;
    // A configured zone may skip a midnight (a DST gap): the day then starts at
    // its first local hour that exists, never a panic.
    let start = |d: NaiveDate| -> DateTime<Utc> {
        let local = |h: u32| {
            d.and_hms_opt(h, 0, 0)
                .and_then(|t| tz.from_local_datetime(&t).earliest())
        };
        (0..3)
            .find_map(local)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| d.and_time(chrono::NaiveTime::MIN).and_utc())
    };
    let (lo, hi) = (start(from), start(to + chrono::Duration::days(1)));

    type Row = (
        String,
        Decimal,
        String,
        String,
        String,
        DateTime<Utc>,
        Option<Uuid>,
        bool,
    );
    // One statement: every receipt once, with whether Billing put it on an invoice.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.receipt, p.amount, p.source, p.account_reference, p.bill_ref_number,
                p.transaction_time, p.suggested_subscriber_id,
                EXISTS (SELECT 1 FROM invoice_payments ip WHERE ip.reference = p.receipt)
         FROM payments p WHERE p.transaction_time >= $1 AND p.transaction_time < $2
         ORDER BY p.transaction_time, p.receipt",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(&m.ctx.pool)
    .await?;
    let (mut receipts, mut matched, mut unallocated) =
        (Sum::default(), Sum::default(), Sum::default());
    let (mut stk, mut c2b) = (Sum::default(), Sum::default());
    let mut listed = vec![];
    for (receipt, amount, source, account, bill_ref, time, suggested, is_matched) in rows {
        receipts.add(amount);
        if source == "stk" {
            stk.add(amount)
        } else {
            c2b.add(amount)
        }
        if is_matched {
            matched.add(amount);
        } else {
            unallocated.add(amount);
            if listed.len() < MAX_LISTED {
                listed.push(json!({"receipt": receipt, "amount": money(amount),
                    "accountReference": account, "billRefNumber": bill_ref,
                    "transactionTime": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "suggestedSubscriber": suggested}));
            }
        }
    }
    let (paid_n, paid_total, flight_n, flight_total): (i64, Decimal, i64, Decimal) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'Paid' AND paid_at >= $1 AND paid_at < $2),
                    COALESCE(sum(COALESCE(paid_amount, payout_amount))
                             FILTER (WHERE status = 'Paid' AND paid_at >= $1 AND paid_at < $2), 0),
                    count(*) FILTER (WHERE status IN ('Approved', 'Sent')),
                    COALESCE(sum(payout_amount) FILTER (WHERE status IN ('Approved', 'Sent')), 0)
             FROM commissions",
        )
        .bind(lo)
        .bind(hi)
        .fetch_one(&m.ctx.pool)
        .await?;
    let paid = Sum {
        count: paid_n,
        total: paid_total,
    };
    let flight = Sum {
        count: flight_n,
        total: flight_total,
    };
    Ok(Json(json!({
        "from": from.to_string(), "to": to.to_string(),
        "receipts": receipts.json(),
        "matched": matched.json(),
        "unallocated": unallocated.json(),
        "bySource": {"stk": stk.json(), "c2b": c2b.json()},
        "unallocatedReceipts": listed,
        "commissionsPaid": paid.json(),
        "commissionsInFlight": flight.json(),
        "net": money(receipts.total - paid.total),
        "balanced": matched.total + unallocated.total == receipts.total
            && matched.count + unallocated.count == receipts.count,
    })))
}
