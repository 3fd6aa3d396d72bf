//! Subscriber routes. `POST` is the contract CRM calls when a lead is converted
//! (service token with scope `billing.subscribers.create`), also used by Admin and
//! Billing Manager for walk-in customers: it creates the subscriber and the first
//! invoice in one transaction and honours `Idempotency-Key`. Reads and `PATCH` go
//! through the collection engine (field-level access).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{Datelike, NaiveDate};
use isp_events::options::BillingCycle;
use isp_events::outbox::enqueue;
use isp_events::payloads::{InvoiceCreated, SubscriberCreated};
use isp_platform::auth::Principal;
use isp_platform::collection::{self, canonical, parse_body, Collection};
use isp_platform::{idempotency, ApiError, ApiResult, FieldError, ServiceContext};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::collections::{self as c, internal, snapshot, LineItem};
use crate::App;
use isp_platform::collection::Operation;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `POST /api/billing/subscribers`; reads and updates are the engine's, deletes
/// are switched off (subscribers are Deactivated).
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(create))
}

/// Fields the create body may carry, besides `oneOffCharges`.
const CREATE_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "mpesaNumber",
    "contactPhone",
    "email",
    "servicePlan",
    "billingCycle",
    "trialEndDate",
    "gracePeriodEndDate",
    "addressNotes",
    "internalNotes",
    "serviceLocation",
    "building",
    "lead",
];

/// Relationship fields the create body names that are system fields on updates.
/// The create body's schema: exactly what [`validate`] accepts.
pub struct SubscriberCreateBody;

impl utoipa::PartialSchema for SubscriberCreateBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use isp_platform::collection::Kind;
        use isp_platform::openapi::field_input as f;
        let mut charges = isp_platform::openapi::line_items(true);
        charges["type"] = json!(["array", "null"]);
        isp_platform::openapi::schema(json!({
        "type": "object", "additionalProperties": false,
        "required": ["firstName", "lastName", "mpesaNumber", "servicePlan", "billingCycle"],
        "properties": {
            "firstName": f("firstName", Kind::TEXT, true),
            "lastName": f("lastName", Kind::TEXT, true),
            "mpesaNumber": f("mpesaNumber", Kind::Phone, true),
            "contactPhone": f("contactPhone", Kind::Phone, false),
            "email": f("email", Kind::Email, false),
            "servicePlan": f("servicePlan", Kind::Relation, true),
            "billingCycle": f("billingCycle", Kind::Select(c::BILLING_CYCLES), true),
            "trialEndDate": f("trialEndDate", Kind::Date, false),
            "gracePeriodEndDate": f("gracePeriodEndDate", Kind::Date, false),
            "addressNotes": f("addressNotes", Kind::TEXT_AREA, false),
            "internalNotes": f("internalNotes", Kind::RICH_TEXT, false),
            "serviceLocation": f("serviceLocation", Kind::Relation, false),
            "building": f("building", Kind::Relation, false),
            "lead": f("lead", Kind::Relation, false),
            "oneOffCharges": charges,
        }}))
    }
}

impl utoipa::ToSchema for SubscriberCreateBody {}

fn create_field(coll: &Collection, name: &str) -> Option<collection::Field> {
    coll.field(name).cloned().map(|mut f| {
        f.required = matches!(
            name,
            "firstName" | "lastName" | "mpesaNumber" | "servicePlan" | "billingCycle"
        );
        f
    })
}

/// Creates a subscriber and the first invoice: the plan's fee for the first period
/// plus one-off charges. 201 `{doc, invoice, message}`.
#[utoipa::path(post, path = "/api/billing/subscribers", tag = "subscribers",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body return the first answer")),
    request_body = SubscriberCreateBody,
    extensions(("x-references" = json!(["servicePlan"]))),
    responses((status = 201, description = "{doc, invoice, message}"), (status = 400, description = "Invalid input, unknown plan"),
              (status = 403, description = "Not Admin, Billing Manager or a service with billing.subscribers.create"),
              (status = 409, description = "Plan disabled or closed to signups; Idempotency-Key reused with another body")))]
async fn create(
    State(s): State<App>,
    p: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.colls.subscribers.authorize(&p, Operation::Create)?;
    let key = idempotency::key_from(&headers)?;
    let body = parse_body(&body)?;
    let input = validate(&s.colls.subscribers, &body)?;
    let mut tx = s.ctx.pool.begin().await?;
    let hash = idempotency::request_hash(&body);
    if let Some(k) = &key {
        if let Some((status, stored)) = idempotency::begin(&mut tx, &p, k, &hash).await? {
            return Ok((status, Json(stored)));
        }
    }
    let (sub, invoice) = insert(&mut tx, &s.ctx, s.options.settings, &input).await?;
    let answer = json!({
        "doc": s.colls.subscribers.present(&p, &sub),
        "invoice": invoice,
        "message": "Subscriber successfully created.",
    });
    if let Some(k) = &key {
        idempotency::store(&mut tx, &p, k, &hash, StatusCode::CREATED, &answer).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

struct NewSubscriber {
    data: Map<String, Value>,
    charges: Vec<LineItem>,
}

fn validate(coll: &Collection, body: &Value) -> ApiResult<NewSubscriber> {
    let Value::Object(input) = body else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let mut errors = vec![];
    let mut data = Map::new();
    let mut charges = vec![];
    for (k, v) in input {
        if k == "oneOffCharges" {
            if !v.is_null() {
                match c::parse_line_items(v, "oneOffCharges", true) {
                    Ok(items) => charges = items,
                    Err(ApiError::BadRequest(e)) => errors.extend(e),
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        if !CREATE_FIELDS.contains(&k.as_str()) {
            errors.push(FieldError::new(k, format!("Unknown field {k:?}.")));
            continue;
        }
        let f = create_field(coll, k).expect("create fields are collection fields");
        match canonical(&f, v) {
            Ok(v) if !v.is_null() => {
                data.insert(k.clone(), v);
            }
            Ok(_) => {}
            Err(m) => errors.push(FieldError::new(k, m)),
        }
    }
    for f in [
        "firstName",
        "lastName",
        "mpesaNumber",
        "servicePlan",
        "billingCycle",
    ] {
        if !data.contains_key(f) && !errors.iter().any(|e| e.path.as_deref() == Some(f)) {
            errors.push(FieldError::new(f, format!("{f} is required.")));
        }
    }
    if errors.is_empty() {
        Ok(NewSubscriber { data, charges })
    } else {
        Err(ApiError::BadRequest(errors))
    }
}

fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// `10001` -> `100016`: the sequence number and its Luhn check digit.
pub fn account_number(n: i64) -> String {
    let base = n.to_string();
    format!("{base}{}", luhn_check_digit(&base))
}

/// Where a subscriber's first paid period starts: activation day, or the day after
/// the trial ends if that is later.
pub fn first_period_start(activation: NaiveDate, trial_end: Option<NaiveDate>) -> NaiveDate {
    match trial_end {
        Some(t) if t >= activation => t.succ_opt().unwrap_or(t),
        _ => activation,
    }
}

async fn insert(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    settings: crate::daily::Settings,
    input: &NewSubscriber,
) -> ApiResult<(Value, Value)> {
    let d = &input.data;
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    let uuid = |k: &str| s(k).and_then(|v| Uuid::parse_str(&v).ok());
    let day = |k: &str| s(k).and_then(|v| NaiveDate::parse_from_str(&v, "%Y-%m-%d").ok());
    // Required by the create schema, so present: missing is a bug, not a nil id.
    let plan_id = uuid("servicePlan").ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("a new subscriber without servicePlan"))
    })?;
    let cycle = s("billingCycle").unwrap_or_else(|| BillingCycle::Monthly.to_string());
    // The plan's price is for the plan's cycle; the first period is one of the
    // subscriber's cycle (docs/billing.md, "Period prices").
    let plan: Option<(String, Decimal, bool, bool, bool)> = sqlx::query_as(
        "SELECT name, period_price(price, billing_cycle, $2), plan_enabled, active_for_new_signups, deleted
         FROM plans WHERE id = $1",
    )
    .bind(plan_id)
    .bind(&cycle)
    .fetch_optional(&mut *tx)
    .await?;
    let (plan_name, price) = match plan {
        None | Some((_, _, _, _, true)) => {
            return Err(ApiError::field("servicePlan", "Unknown plan."))
        }
        Some((name, _, false, _, _)) => {
            return Err(ApiError::conflict_field(
                "servicePlan",
                format!("The plan {name:?} is disabled."),
            ))
        }
        Some((name, _, _, false, _)) => {
            return Err(ApiError::conflict_field(
                "servicePlan",
                format!("The plan {name:?} is closed to new signups."),
            ))
        }
        Some((name, price, ..)) => (name, price),
    };
    if let Some(lead) = uuid("lead") {
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM subscribers WHERE lead_id = $1)")
                .bind(lead)
                .fetch_one(&mut *tx)
                .await?;
        if taken {
            return Err(ApiError::conflict_field(
                "lead",
                "This lead was already converted to a subscriber.",
            ));
        }
    }
    let today = ctx.today();
    // Provisional until activation (see docs/billing.md). With a trial the first
    // period, and so the first invoice's due date, starts the day after it.
    let start = first_period_start(today, day("trialEndDate"));
    let due = settings.due_date(start, today);
    let next_due: NaiveDate = sqlx::query_scalar("SELECT add_cycle($1, $2, $3)")
        .bind(start)
        .bind(&cycle)
        .bind(start.day() as i32)
        .fetch_one(&mut *tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT nextval('account_number_seq')")
        .fetch_one(&mut *tx)
        .await?;
    let id = Uuid::now_v7();
    let mut items = vec![LineItem {
        description: format!("{plan_name} ({cycle} service fee)"),
        quantity: 1,
        price,
    }];
    items.extend(input.charges.iter().cloned());
    let amount = c::total(&items);
    if amount > c::money_max() {
        return Err(ApiError::field(
            "oneOffCharges",
            format!(
                "The first invoice would be too large (at most {}).",
                c::money_max()
            ),
        ));
    }
    sqlx::query(
        "INSERT INTO subscribers (id, account_number, first_name, last_name, mpesa_number, contact_phone, email,
             status, service_plan, billing_cycle, next_due_date, billing_anchor_day,
             grace_period_end_date, trial_end_date, address_notes, internal_notes, service_location, building, lead_id,
             first_period_cycle)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'Pending Installation', $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $9)",
    )
    .bind(id)
    .bind(account_number(n))
    .bind(s("firstName"))
    .bind(s("lastName"))
    .bind(s("mpesaNumber"))
    .bind(s("contactPhone"))
    .bind(s("email"))
    .bind(plan_id)
    .bind(&cycle)
    .bind(next_due)
    .bind(start.day() as i32)
    .bind(day("gracePeriodEndDate"))
    .bind(day("trialEndDate"))
    .bind(s("addressNotes"))
    .bind(s("internalNotes"))
    .bind(uuid("serviceLocation"))
    .bind(uuid("building"))
    .bind(uuid("lead"))
    .execute(&mut *tx)
    .await?;
    let inv_id = Uuid::now_v7();
    let inv_n: i64 = sqlx::query_scalar("SELECT nextval('invoice_number_seq')")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO invoices (id, invoice_number, subscriber_id, amount_due, due_date, status, line_items)
         VALUES ($1, $2, $3, $4, $5, 'Unpaid', $6)",
    )
    .bind(inv_id)
    .bind(c::invoice_number(inv_n))
    .bind(id)
    .bind(amount)
    .bind(due)
    .bind(Value::Array(items.iter().map(LineItem::to_json).collect()))
    .execute(&mut *tx)
    .await?;
    crate::ledger::charge(tx, id, amount)
        .await
        .map_err(|e| c::overflow_is_bad_input("oneOffCharges", e))?;
    let subs = c::subscribers();
    let sub = subs
        .fetch(tx, id, false)
        .await?
        .ok_or_else(|| internal(anyhow::anyhow!("subscriber vanished")))?;
    let invoice = c::invoices()
        .fetch(tx, inv_id, false)
        .await?
        .ok_or_else(|| internal(anyhow::anyhow!("invoice vanished")))?;
    let snap = crate::ledger::subscriber_snapshot(tx, id)
        .await
        .map_err(internal)?;
    enqueue(tx, ctx.name, &SubscriberCreated(snap))
        .await
        .map_err(internal)?;
    enqueue(tx, ctx.name, &InvoiceCreated(snapshot(&invoice)?))
        .await
        .map_err(internal)?;
    Ok((sub, invoice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_numbers_carry_a_luhn_check_digit() {
        assert_eq!(account_number(10001), "100016");
        // A single mistyped digit changes the check digit.
        assert_ne!(account_number(10002), "100026");
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }

    #[test]
    fn first_period_starts_after_an_active_trial() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(first_period_start(d("2026-11-25"), None), d("2026-11-25"));
        assert_eq!(
            first_period_start(d("2026-11-25"), Some(d("2026-12-01"))),
            d("2026-12-02")
        );
        assert_eq!(
            first_period_start(d("2026-11-25"), Some(d("2026-11-01"))),
            d("2026-11-25")
        );
    }
}
