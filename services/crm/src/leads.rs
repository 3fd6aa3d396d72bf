//! `POST /api/crm/leads/{id}/convert`: a lead becomes a Billing subscriber. The
//! leads' own operations are the collection engine's (creating one honours
//! `Idempotency-Key`: wa-parser retries it).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use isp_events::options::{BillingCycle, LeadStatus};
use isp_events::outbox::enqueue;
use isp_events::payloads::LeadConverted;
use isp_platform::auth::Principal;
use isp_platform::collection::{
    canonical, parse_body, parse_id, stored, Collection, Field, Kind, Operation,
};
use isp_platform::{ApiError, ApiResult, FieldError};
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::collections::{doc_id, internal, mark_unit_subscriber};
use crate::App;

/// Billing's endpoint and the scope CRM's service token carries for it.
pub const BILLING_SUBSCRIBERS: &str = "/api/billing/subscribers";
pub const BILLING_SCOPE: &str = "billing.subscribers.create";
/// Everything CRM's token carries: the create scope, and a write scope for each
/// field of a converted lead that Billing keeps from some roles (a service may
/// write such a field only if its token names it).
pub const BILLING_SCOPES: &[&str] = &[
    BILLING_SCOPE,
    "billing.subscribers.firstName.write",
    "billing.subscribers.lastName.write",
    "billing.subscribers.mpesaNumber.write",
    "billing.subscribers.contactPhone.write",
    "billing.subscribers.email.write",
    "billing.subscribers.servicePlan.write",
    "billing.subscribers.billingCycle.write",
    "billing.subscribers.trialEndDate.write",
    "billing.subscribers.addressNotes.write",
];

/// `POST /api/crm/leads/{id}/convert`; the leads' CRUD is the engine's.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(convert))
}

// ---- conversion -----------------------------------------------------------------

/// What the Sales Agent gives when converting; validated here (every bad field
/// named at once) before anything is locked or sent to Billing.
#[derive(Debug)]
pub struct ConvertInput {
    pub service_plan: Uuid,
    pub billing_cycle: BillingCycle,
    pub mpesa_number: Option<String>,
    pub contact_phone: Option<String>,
    pub email: Option<String>,
    pub trial_end_date: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address_notes: Option<String>,
    pub one_off_charges: Vec<Value>,
}

const BILLING_CYCLES: &[&str] = BillingCycle::ALL;

/// The convert body's schema: exactly what [`ConvertInput::parse`] accepts.
pub struct ConvertBody;

impl utoipa::PartialSchema for ConvertBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use isp_platform::openapi::field_input as f;
        // Billing stores the charges: its limits are the operation's.
        let mut charges = isp_platform::openapi::line_items(true);
        charges["type"] = json!(["array", "null"]);
        isp_platform::openapi::schema(json!({
        "type": "object", "additionalProperties": false,
        "required": ["servicePlan", "billingCycle"],
        "properties": {
            "servicePlan": f("servicePlan", Kind::Relation, true),
            "billingCycle": f("billingCycle", Kind::Select(BILLING_CYCLES), true),
            "mpesaNumber": f("mpesaNumber", Kind::Phone, false),
            "contactPhone": f("contactPhone", Kind::Phone, false),
            "email": f("email", Kind::Email, false),
            "trialEndDate": f("trialEndDate", Kind::Date, false),
            "firstName": f("firstName", Kind::TEXT, false),
            "lastName": f("lastName", Kind::TEXT, false),
            "addressNotes": f("addressNotes", Kind::TEXT_AREA, false),
            "oneOffCharges": charges,
        }}))
    }
}

impl utoipa::ToSchema for ConvertBody {}

impl ConvertInput {
    pub fn parse(body: &Value) -> ApiResult<ConvertInput> {
        let Value::Object(m) = body else {
            return Err(ApiError::bad_request("The body must be a JSON object."));
        };
        let mut errors = vec![];
        let fields = [
            Field::new("servicePlan", "", Kind::Relation).required(),
            Field::new("billingCycle", "", Kind::Select(BILLING_CYCLES)).required(),
            Field::new("mpesaNumber", "", Kind::Phone),
            Field::new("contactPhone", "", Kind::Phone),
            Field::new("email", "", Kind::Email),
            Field::new("trialEndDate", "", Kind::Date),
            Field::new("firstName", "", Kind::TEXT),
            Field::new("lastName", "", Kind::TEXT),
            Field::new("addressNotes", "", Kind::TEXT_AREA),
        ];
        for k in m.keys() {
            if k != "oneOffCharges" && !fields.iter().any(|f| f.name == k) {
                errors.push(FieldError::new(k, format!("Unknown field {k:?}.")));
            }
        }
        let mut vals = Map::new();
        for f in &fields {
            match canonical(f, m.get(f.name).unwrap_or(&Value::Null)) {
                Ok(v) => {
                    vals.insert(f.name.into(), v);
                }
                Err(msg) => errors.push(FieldError::new(f.name, msg)),
            }
        }
        // Billing's rule for line items, checked here so that a conversion Billing
        // would refuse never reaches it.
        let mut charges = vec![];
        match m.get("oneOffCharges") {
            None | Some(Value::Null) => {}
            Some(v) => match isp_platform::line_items::parse(v, "oneOffCharges", true) {
                Ok(items) => charges = items.iter().map(|i| i.to_json()).collect(),
                Err(ApiError::BadRequest(e)) => errors.extend(e),
                Err(e) => return Err(e),
            },
        }
        if !errors.is_empty() {
            return Err(ApiError::BadRequest(errors));
        }
        let s = |k: &str| vals[k].as_str().map(str::to_owned);
        Ok(ConvertInput {
            service_plan: s("servicePlan")
                .and_then(|u| Uuid::parse_str(&u).ok())
                .ok_or_else(|| ApiError::field("servicePlan", "Must be a valid id."))?,
            billing_cycle: s("billingCycle")
                .and_then(|c| BillingCycle::parse(&c))
                .ok_or_else(|| ApiError::field("billingCycle", "Must be Monthly or Quarterly."))?,
            mpesa_number: s("mpesaNumber"),
            contact_phone: s("contactPhone"),
            email: s("email"),
            trial_end_date: s("trialEndDate"),
            first_name: s("firstName"),
            last_name: s("lastName"),
            address_notes: s("addressNotes"),
            one_off_charges: charges,
        })
    }
}

/// "Jane Wanjiku Doe" -> ("Jane", "Wanjiku Doe"); explicit names win.
pub fn split_name(
    full: &str,
    first: Option<String>,
    last: Option<String>,
) -> ApiResult<(String, String)> {
    let mut words = full.split_whitespace();
    let first_word = words.next().map(str::to_owned);
    let rest = words.collect::<Vec<_>>().join(" ");
    let first = first.or(first_word).ok_or_else(|| {
        ApiError::field("firstName", "firstName is required (the lead has no name).")
    })?;
    let last = match last {
        Some(l) => l,
        None if !rest.is_empty() => rest,
        None => {
            return Err(ApiError::field(
                "lastName",
                "The lead's subscriberName is a single word; give lastName.",
            ))
        }
    };
    Ok((first, last))
}

/// What a Sales Agent may see of the subscriber Billing created: basic,
/// non-financial information (docs/contract.md#roles).
fn subscriber_summary(doc: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "id",
        "accountNumber",
        "firstName",
        "lastName",
        "status",
        "servicePlan",
        "billingCycle",
        "mpesaNumber",
    ] {
        out.insert(k.into(), doc.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn invoice_summary(doc: &Value) -> Value {
    if doc.is_null() {
        return Value::Null;
    }
    let mut out = Map::new();
    for k in [
        "id",
        "invoiceNumber",
        "amountDue",
        "dueDate",
        "status",
        "lineItems",
    ] {
        out.insert(k.into(), doc.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// The answer to a convert: the lead, the subscriber's basic info, and the first
/// invoice for Admin and services only (Sales Agents see no finance data).
fn answer(
    leads: &Collection,
    p: &Principal,
    lead: &Value,
    conversion: &Value,
    message: &str,
) -> Value {
    let mut out = json!({
        "doc": leads.present(p, lead),
        "subscriber": conversion["subscriber"],
        "message": message,
    });
    if p.is_admin() || matches!(p, Principal::Service { .. }) {
        out["invoice"] = conversion["invoice"].clone();
    }
    out
}

/// Billing's refusals the user can act on (400 naming a field, 409 on the plan)
/// pass through as they are. A 404 means Billing's endpoint is not there (not
/// deployed, wrong `ISP_INTERNAL_URL`): to the user, like a timeout, that is
/// Billing being unavailable.
fn billing_error(e: ApiError) -> ApiError {
    const UNAVAILABLE: &str =
        "Billing is unavailable, so the lead was not converted; nothing was changed. Try again shortly.";
    match e {
        ApiError::NotFound(_) | ApiError::Unavailable(_) => {
            ApiError::Unavailable(UNAVAILABLE.into())
        }
        // Billing already holds a subscriber for this lead from an attempt whose
        // local commit failed, and this attempt differs (other plan or charges).
        ApiError::Conflict(errs)
            if errs
                .iter()
                .any(|f| matches!(f.path.as_deref(), Some("Idempotency-Key") | Some("lead"))) =>
        {
            ApiError::conflict(
                "Billing already created a subscriber for this lead in an earlier attempt with other details; convert again with the same plan, billing cycle and charges to complete it.",
            )
        }
        other => other,
    }
}

/// Converts a lead into a Billing subscriber (Pending Installation) with its first
/// invoice (plan fee + one-off charges).
///
/// No database connection or row lock is held while Billing is called (its answer
/// may take retries): the lead is read, Billing is asked with
/// `Idempotency-Key: lead-convert-<lead id>`, then the lead is locked and marked
/// Converted. Two simultaneous converts of one lead both get Billing's one
/// subscriber for that key; the first to lock the lead marks it and publishes
/// `lead.converted`, the second finds it Converted and answers 200 with the same
/// subscriber (idempotent, like a retried click). A conversion whose local commit
/// failed after Billing committed gets the same subscriber and invoice on retry.
/// Billing's refusals (plan disabled or closed to new signups: 409
/// `servicePlan`; bad fields: 400) pass through unchanged, and nothing is written
/// here: no half-converted lead, unit or event.
#[utoipa::path(post, path = "/api/crm/leads/{id}/convert", tag = "leads",
    params(("id" = Uuid, Path, description = "Lead id")),
    request_body = ConvertBody,
    extensions(("x-references" = json!(["servicePlan"]))),
    responses(
        (status = 201, description = "{doc: lead, subscriber, invoice (Admin only), message}"),
        (status = 200, description = "Already converted: the same subscriber"),
        (status = 400, description = "Invalid input"),
        (status = 403, description = "Role may not"),
        (status = 404, description = "No such lead"),
        (status = 409, description = "Lead is Lost, or Billing refused (plan closed to new signups)"),
        (status = 503, description = "Billing unavailable; nothing was changed")))]
async fn convert(
    State(s): State<App>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    s.colls.leads.authorize(&p, Operation::Action("convert"))?;
    let id = parse_id(&id)?;
    let input = ConvertInput::parse(&parse_body(&body)?)?;

    // 1. Read the lead and where it is; no lock is kept past this block.
    let (lead, unit, building, unit_number, building_name, address) = {
        let mut conn = s.ctx.pool.acquire().await?;
        let lead = s
            .colls
            .leads
            .fetch(&mut conn, id, false)
            .await?
            .ok_or_else(|| ApiError::not_found("Lead"))?;
        match stored::option::<LeadStatus>(&lead, "status")? {
            LeadStatus::Converted => return already_converted(&s, &p, &mut conn, &lead).await,
            LeadStatus::Lost => {
                return Err(ApiError::conflict_field(
                    "status",
                    "The lead is Lost; reopen it (set its status to New, Contacted or Site Survey) before converting.",
                ))
            }
            _ => {}
        }
        let unit = doc_id(&lead, "serviceLocation")
            .ok_or_else(|| internal(anyhow::anyhow!("lead without serviceLocation")))?;
        let (unit_number, building, building_name, address): (String, Uuid, String, String) =
            sqlx::query_as(
                "SELECT u.unit_number, b.id, b.name, b.address FROM building_units u
                 JOIN buildings b ON b.id = u.building WHERE u.id = $1",
            )
            .bind(unit)
            .fetch_one(&mut *conn)
            .await?;
        (lead, unit, building, unit_number, building_name, address)
    };
    let (first, last) = split_name(
        lead["subscriberName"].as_str().unwrap_or_default(),
        input.first_name.clone(),
        input.last_name.clone(),
    )?;
    let phone = lead["subscriberPhone"].clone();
    let mut req = json!({
        "firstName": first,
        "lastName": last,
        "mpesaNumber": input.mpesa_number.clone().map(Value::from).unwrap_or(phone.clone()),
        "contactPhone": input.contact_phone.clone().map(Value::from).unwrap_or(phone),
        "servicePlan": input.service_plan,
        "billingCycle": input.billing_cycle,
        "addressNotes": input.address_notes.clone()
            .unwrap_or_else(|| format!("{unit_number}, {building_name}, {address}")),
        "serviceLocation": unit,
        "building": building,
        "lead": id,
        "oneOffCharges": input.one_off_charges,
    });
    if let Some(e) = &input.email {
        req["email"] = json!(e);
    }
    if let Some(d) = &input.trial_end_date {
        req["trialEndDate"] = json!(d);
    }

    // 2. Billing creates the subscriber (once per lead, whatever the retries).
    let client = s.ctx.client(BILLING_SCOPES).map_err(internal)?;
    let res = match client
        .post(BILLING_SUBSCRIBERS, &req, &format!("lead-convert-{id}"))
        .await
    {
        Ok((_, res)) => res,
        Err(e) => {
            // A simultaneous convert with other details may have won the key:
            // then the lead is (or is about to be) Converted by it.
            let mut conn = s.ctx.pool.acquire().await?;
            if let Some(lead) = s.colls.leads.fetch(&mut conn, id, false).await? {
                if lead["status"] == LeadStatus::Converted {
                    return already_converted(&s, &p, &mut conn, &lead).await;
                }
            }
            return Err(billing_error(e));
        }
    };
    let subscriber = doc_id(&res["doc"], "id").ok_or_else(|| {
        internal(anyhow::anyhow!(
            "Billing answered without a subscriber id: {res}"
        ))
    })?;
    let conversion = json!({
        "subscriber": subscriber_summary(&res["doc"]),
        "invoice": invoice_summary(&res["invoice"]),
    });

    // 3. Mark the lead, its unit and the event, unless a simultaneous convert did.
    let mut tx = s.ctx.pool.begin().await?;
    let lead = s
        .colls
        .leads
        .fetch(&mut tx, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("Lead"))?;
    if lead["status"] == LeadStatus::Converted {
        return already_converted(&s, &p, &mut tx, &lead).await;
    }
    // Even a lead set Lost meanwhile is converted now: Billing holds its subscriber.
    let converted_at = chrono::Utc::now();
    sqlx::query(
        "UPDATE leads SET status = 'Converted', subscriber = $2, converted_at = $3,
             conversion = $4, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(subscriber)
    .bind(converted_at)
    .bind(&conversion)
    .execute(&mut *tx)
    .await?;
    mark_unit_subscriber(&mut tx, unit).await?;
    enqueue(
        &mut tx,
        s.ctx.name,
        &LeadConverted {
            lead_id: id,
            referred_by: doc_id(&lead, "referredBy"),
            subscriber_id: subscriber,
            converted_at,
        },
    )
    .await
    .map_err(internal)?;
    let doc = s
        .colls
        .leads
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| internal(anyhow::anyhow!("lead vanished")))?;
    tx.commit().await?;
    // Billing answers every created subscriber with its account number.
    let account = conversion["subscriber"]["accountNumber"]
        .as_str()
        .ok_or_else(|| internal(anyhow::anyhow!("Billing's answer has no accountNumber")))?
        .to_owned();
    Ok((
        StatusCode::CREATED,
        Json(answer(
            &s.colls.leads,
            &p,
            &doc,
            &conversion,
            &format!("Lead converted: subscriber {account} is Pending Installation."),
        )),
    ))
}

/// 200 with the subscriber (and invoice) the lead was converted to.
async fn already_converted(
    s: &App,
    p: &Principal,
    conn: &mut sqlx::PgConnection,
    lead: &Value,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = doc_id(lead, "id").ok_or_else(|| internal(anyhow::anyhow!("lead without id")))?;
    let conversion: Option<Value> =
        sqlx::query_scalar("SELECT conversion FROM leads WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let conversion = conversion
        .unwrap_or_else(|| json!({"subscriber": {"id": lead["subscriber"]}, "invoice": null}));
    Ok((
        StatusCode::OK,
        Json(answer(
            &s.colls.leads,
            p,
            lead,
            &conversion,
            "This lead was already converted.",
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_first_word_and_rest() {
        assert_eq!(
            split_name("Jane Wanjiku Doe", None, None).unwrap(),
            ("Jane".into(), "Wanjiku Doe".into())
        );
        assert_eq!(
            split_name("Jane", None, Some("Doe".into())).unwrap(),
            ("Jane".into(), "Doe".into())
        );
        assert!(split_name("Jane", None, None).is_err());
    }

    #[test]
    fn convert_input_names_every_bad_field() {
        let e = ConvertInput::parse(&json!({
            "billingCycle": "Weekly", "mpesaNumber": "12", "email": "x",
            "oneOffCharges": [{"description": "", "quantity": 0, "price": "-1"}, 5],
            "bogus": 1
        }))
        .unwrap_err();
        let mut paths: Vec<String> = e.errors().into_iter().filter_map(|f| f.path).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "billingCycle",
                "bogus",
                "email",
                "mpesaNumber",
                "oneOffCharges.0.description",
                "oneOffCharges.0.price",
                "oneOffCharges.0.quantity",
                "oneOffCharges.1",
                "servicePlan"
            ]
        );
    }
}
