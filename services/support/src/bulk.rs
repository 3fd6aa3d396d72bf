//! Bulk sends (SPEC 3.5 "Bulk Messaging Workflow", GATEWAYS.md section 6).
//!
//! `POST /api/support/messages/bulk` checks the request, stores one parent message
//! (`bulkSend: true`, status `Scheduled`) and answers 202 at once with the
//! recipient count. A background worker then takes each due parent (`FOR UPDATE
//! SKIP LOCKED`, so replicas share the work), builds the audience, renders every
//! recipient's text and writes all children and all of Notify's requests in one
//! transaction with two set-based inserts; Notify sends them at the provider's
//! rate and its reports move each child forward. A number appears once per send.
//!
//! Promotional sends skip the suppression list (each skip is a `Skipped` child,
//! so it is counted), carry the opt-out footer, and start only between 08:00 and
//! 18:00 East Africa Time (a request outside the window is held until 08:00).
//! Transactional sends (an outage notice) have none of these limits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Days, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use isp_events::payloads::{
    NotificationCategory, NotificationChannel, NotificationRequest, SupportNotificationRequested,
};
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::collection::{parse_body, parse_id, Operation};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use tokio::sync::Notify;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::api::{channel_of, check, message_source};
use crate::collections::{MessageStatus, SUPPORT};
use crate::notifications::{
    category_from_label, category_label, channel_from_label, channel_label, Customer,
};
use crate::{templates, Collections, Settings};

/// Kenya's promotional window is set in East Africa Time whatever the ISP's zone.
const EAT: Tz = chrono_tz::Africa::Nairobi;
const SAMPLE: usize = 10;

pub struct Bulk {
    ctx: Arc<ServiceContext>,
    colls: Arc<Collections>,
    settings: Settings,
    wake: Notify,
}

#[derive(Clone)]
pub struct BulkState(Arc<Bulk>);

impl HasKeys for BulkState {
    fn keys(&self) -> &Keys {
        &self.0.ctx.keys
    }
}

impl Bulk {
    pub fn start(
        ctx: Arc<ServiceContext>,
        colls: Arc<Collections>,
        settings: Settings,
    ) -> Arc<Bulk> {
        let bulk = Arc::new(Bulk {
            ctx,
            colls,
            settings,
            wake: Notify::new(),
        });
        let b = bulk.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    match b.run_one().await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::error!(error = ?e, "bulk send failed; retrying");
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = b.ctx.shutdown.cancelled() => return,
                    _ = b.wake.notified() => {}
                    // Scheduled sends fall due without anyone waking us.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        bulk
    }

    /// Queues the earliest due bulk send; false when none is due.
    async fn run_one(&self) -> anyhow::Result<bool> {
        let mut tx = self.ctx.pool.begin().await?;
        // id, audience, type, content, subject, category, trigger_event, sent_by
        type Due = (
            Uuid,
            Value,
            String,
            String,
            Option<String>,
            String,
            String,
            Option<Uuid>,
        );
        let due: Option<Due> = sqlx::query_as(
            "SELECT id, audience, type, content, subject, category, trigger_event, sent_by
                 FROM messages WHERE bulk_send AND status = 'Scheduled' AND scheduled_at <= now()
                 ORDER BY scheduled_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, audience, channel, content, subject, category, trigger, sent_by)) = due
        else {
            return Ok(false);
        };
        let audience: Audience = serde_json::from_value(audience)?;
        let channel = channel_from_label(&channel)
            .ok_or_else(|| anyhow::anyhow!("bulk send {id} has an unknown type {channel:?}"))?;
        let category = category_from_label(&category).ok_or_else(|| {
            anyhow::anyhow!("bulk send {id} has an unknown category {category:?}")
        })?;
        let plan = recipients(&mut tx, &audience, channel, category).await?;
        let footer = (category == NotificationCategory::Promotional)
            .then(|| self.settings.opt_out_footer.clone());
        let n = plan.send.len();
        let (mut ids, mut to, mut bodies, mut subjects, mut subs, mut contacts) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut statuses, mut reasons, mut requests) = (vec![], vec![], vec![]);
        for (r, skipped) in plan
            .send
            .into_iter()
            .map(|r| (r, false))
            .chain(plan.suppressed.into_iter().map(|r| (r, true)))
        {
            let vars = Value::Object(r.vars);
            let mut body = templates::render(&content, &vars)?;
            if let Some(f) = &footer {
                body.push('\n');
                body.push_str(f);
            }
            let subj = match (&subject, channel) {
                (Some(s), NotificationChannel::Email) => Some(templates::render(s, &vars)?),
                _ => None,
            };
            let mid = Uuid::now_v7();
            if !skipped {
                requests.push(SupportNotificationRequested(NotificationRequest {
                    id: mid,
                    channel,
                    recipient: r.address.clone(),
                    subject: subj.clone(),
                    body: body.clone(),
                    category,
                    reference: Some(mid.to_string()),
                }));
            }
            ids.push(mid);
            to.push(r.address);
            bodies.push(body);
            subjects.push(subj);
            subs.push(r.subscriber);
            contacts.push(r.contact);
            statuses.push(
                if skipped {
                    MessageStatus::Skipped
                } else {
                    MessageStatus::Queued
                }
                .as_str(),
            );
            reasons.push(skipped.then_some("Suppressed"));
        }
        sqlx::query(
            "INSERT INTO messages (id, recipient, type, content, subject, status, failure_reason,
                 trigger_event, category, subscriber, contact, sent_by, parent, bulk_send)
             SELECT t.id, t.recipient, $7, t.content, t.subject, t.status, t.reason, $8, $9,
                 t.subscriber, t.contact, $10, $11, false
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                 $12::text[], $13::text[])
                 AS t(id, recipient, content, subject, subscriber, contact, status, reason)",
        )
        .bind(&ids)
        .bind(&to)
        .bind(&bodies)
        .bind(&subjects)
        .bind(&subs)
        .bind(&contacts)
        .bind(channel_label(channel))
        .bind(&trigger)
        .bind(category_label(category))
        .bind(sent_by)
        .bind(id)
        .bind(&statuses)
        .bind(&reasons)
        .execute(&mut *tx)
        .await?;
        isp_events::outbox::enqueue_batch(&mut tx, "support", &requests).await?;
        sqlx::query(
            "UPDATE messages SET status = 'Queued', recipient_count = $2, updated_at = now(), status_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(n as i32)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(bulk = %id, recipients = n, "bulk send queued");
        Ok(true)
    }
}

pub fn routes(bulk: Arc<Bulk>) -> Router {
    Router::new()
        .route("/api/support/messages/bulk", post(create))
        .route("/api/support/messages/bulk/{id}", get(progress))
        .route("/api/support/messages/bulk/{id}/cancel", post(cancel))
        .with_state(BulkState(bulk))
}

#[derive(OpenApi)]
#[openapi(
    paths(create, progress, cancel),
    components(schemas(BulkRequest, BulkAccepted, DryRun, Progress, Sample))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// Who gets a bulk send.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audience {
    /// `subscribers` (registered) or `contacts` (unregistered).
    #[serde(rename = "type")]
    pub kind: String,
    /// Subscribers on any of these plans (absent or empty: any plan).
    #[serde(default)]
    pub plans: Vec<Uuid>,
    /// Subscribers behind any of these NOC routers.
    #[serde(default)]
    pub routers: Vec<Uuid>,
    /// Subscribers in any of these buildings.
    #[serde(default)]
    pub buildings: Vec<Uuid>,
    /// Subscribers with any of these statuses (`Pending Installation`, `Active`,
    /// `Suspended`, `Deactivated`).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// For `contacts`: the selected contacts (absent or empty: all contacts).
    #[serde(default)]
    pub contacts: Vec<Uuid>,
}

/// The request body, exactly as [`check_request`] reads it.
struct BulkRequest;

impl utoipa::PartialSchema for BulkRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let ids = |d: &str| {
            json!({"type": "array", "description": d,
                "items": {"type": "string", "format": "uuid", "pattern": UUID}})
        };
        let none = json!({"type": "array", "maxItems": 0});
        let audience = json!({"type": "object", "required": ["type"],
        "description": "Who gets it: registered subscribers (filtered by plans, routers, buildings, statuses; each absent or empty: any) or unregistered contacts (absent or empty: all)",
        "properties": {
            "type": {"type": "string", "enum": ["subscribers", "contacts"]},
            "plans": ids("Subscribers on any of these plans"),
            "routers": ids("Subscribers behind any of these NOC routers"),
            "buildings": ids("Subscribers in any of these buildings"),
            "statuses": {"type": "array", "description": "Subscribers with any of these statuses",
                "items": {"type": "string", "enum": SUBSCRIBER_STATUSES}},
            "contacts": ids("For contacts: the selected contacts"),
        },
        "oneOf": [
            {"properties": {"type": {"const": "subscribers"}, "contacts": none}},
            {"properties": {"type": {"const": "contacts"}, "plans": none, "routers": none,
                "buildings": none, "statuses": none}}
        ]});
        let mut props = crate::api::source_properties();
        props.insert("audience".into(), audience);
        props.insert(
            "channel".into(),
            json!({"type": "string", "enum": ["SMS", "Email"]}),
        );
        props.insert("category".into(), json!({"type": "string", "enum": ["Transactional", "Promotional"],
            "description": "Transactional (an outage notice: no quiet hours, no suppression) or Promotional (suppression list, opt-out footer, 08:00 to 18:00 EAT only)"}));
        props.insert("triggerEvent".into(), json!({"type": ["string", "null"],
            "pattern": "^bulk\\.[A-Za-z0-9._-]{1,95}$",
            "description": "The log's triggerEvent, e.g. bulk.outage (default bulk.transactional / bulk.promotional)"}));
        props.insert(
            "scheduledAt".into(),
            json!({"type": ["string", "null"], "format": "date-time",
            "description": "Send later (RFC 3339); cancel before it starts with .../cancel"}),
        );
        props.insert(
            "dryRun".into(),
            json!({"type": ["boolean", "null"],
            "description": "Count and sample the recipients without sending"}),
        );
        isp_platform::openapi::schema(json!({
            "type": "object", "additionalProperties": false,
            "required": ["audience", "channel", "category"],
            "properties": props, "oneOf": crate::api::source_one_of()}))
    }
}

impl ToSchema for BulkRequest {}

const UUID: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const SUBSCRIBER_STATUSES: &[&str] = isp_events::options::SubscriberStatus::ALL;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BulkAccepted {
    /// The parent message (`bulkSend: true`).
    #[schema(value_type = Object)]
    doc: Value,
    /// Recipients the send goes to now (it is counted again when it starts).
    recipient_count: usize,
    /// Promotional: recipients skipped because they are on the suppression list.
    suppressed: usize,
    /// Recipients without an address on this channel (e.g. no email).
    no_address: usize,
    /// Second and later occurrences of a number or address.
    duplicates: usize,
    /// When the send starts (later than asked for a promotional send outside 08:00 to 18:00 EAT).
    scheduled_at: DateTime<Utc>,
    message: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DryRun {
    recipient_count: usize,
    suppressed: usize,
    no_address: usize,
    duplicates: usize,
    /// Up to 10 recipients with their rendered text.
    sample: Vec<Sample>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Sample {
    recipient: String,
    name: String,
    content: String,
}

struct Recipient {
    address: String,
    name: String,
    subscriber: Option<Uuid>,
    contact: Option<Uuid>,
    vars: Map<String, Value>,
}

#[derive(Default)]
struct Plan {
    send: Vec<Recipient>,
    suppressed: Vec<Recipient>,
    no_address: usize,
    duplicates: usize,
}

async fn recipients(
    tx: &mut PgConnection,
    a: &Audience,
    channel: NotificationChannel,
    category: NotificationCategory,
) -> anyhow::Result<Plan> {
    let opt = |v: &Vec<Uuid>| (!v.is_empty()).then(|| v.clone());
    let candidates: Vec<(Option<String>, Recipient)> = if a.kind == "contacts" {
        let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT id, phone_number, full_name FROM contacts
             WHERE ($1::uuid[] IS NULL OR id = ANY($1)) ORDER BY created_at, id",
        )
        .bind(opt(&a.contacts))
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|(id, phone, name)| {
                let name = name.unwrap_or_default();
                let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
                let mut vars = Map::new();
                vars.insert("firstName".into(), json!(first));
                vars.insert("lastName".into(), json!(last));
                vars.insert("fullName".into(), json!(name));
                vars.insert("accountNumber".into(), json!(""));
                vars.insert("phoneNumber".into(), json!(phone));
                let address = (channel == NotificationChannel::Sms).then(|| phone.clone());
                (
                    address,
                    Recipient {
                        address: String::new(),
                        name: name.clone(),
                        subscriber: None,
                        contact: Some(id),
                        vars,
                    },
                )
            })
            .collect()
    } else {
        let statuses = (!a.statuses.is_empty()).then(|| a.statuses.clone());
        let rows: Vec<Customer> = sqlx::query_as(
            "SELECT id, first_name, last_name, account_number, mpesa_number, contact_phone, email
             FROM subscribers
             WHERE ($1::uuid[] IS NULL OR service_plan = ANY($1))
               AND ($2::uuid[] IS NULL OR router = ANY($2))
               AND ($3::uuid[] IS NULL OR building = ANY($3))
               AND ($4::text[] IS NULL OR status = ANY($4))
             ORDER BY created_at, id",
        )
        .bind(opt(&a.plans))
        .bind(opt(&a.routers))
        .bind(opt(&a.buildings))
        .bind(statuses)
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|c| {
                let address = match channel {
                    NotificationChannel::Sms => Some(c.phone().to_string()),
                    NotificationChannel::Email => c.email.clone(),
                };
                (
                    address,
                    Recipient {
                        address: String::new(),
                        name: format!("{} {}", c.first_name, c.last_name),
                        subscriber: Some(c.id),
                        contact: None,
                        vars: c.vars(),
                    },
                )
            })
            .collect()
    };
    let suppressed: HashSet<String> = if category == NotificationCategory::Promotional {
        sqlx::query_scalar("SELECT address FROM suppressions")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    } else {
        HashSet::new()
    };
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    for (address, mut r) in candidates {
        let Some(address) = address else {
            plan.no_address += 1;
            continue;
        };
        if !seen.insert(address.clone()) {
            plan.duplicates += 1;
            continue;
        }
        r.address = address;
        if suppressed.contains(&r.address) {
            plan.suppressed.push(r);
        } else {
            plan.send.push(r);
        }
    }
    Ok(plan)
}

/// When a promotional send that would start at `at` may start: `at` itself inside
/// the window (08:00 to 18:00 EAT by default), else the window's next opening.
pub fn promotional_start(at: DateTime<Utc>, (from, to): (u32, u32)) -> DateTime<Utc> {
    let local = at.with_timezone(&EAT);
    let open = NaiveTime::from_hms_opt(from, 0, 0).expect("checked hour");
    let t = local.time();
    if t >= open && (to == 24 || t < NaiveTime::from_hms_opt(to, 0, 0).expect("checked hour")) {
        return at;
    }
    let day = if t < open {
        local.date_naive()
    } else {
        local.date_naive() + Days::new(1)
    };
    EAT.from_local_datetime(&day.and_time(open))
        .single()
        .expect("EAT has no DST")
        .with_timezone(&Utc)
}

/// The checked request.
struct Checked {
    audience: Audience,
    channel: NotificationChannel,
    category: NotificationCategory,
    content: String,
    subject: Option<String>,
    trigger: String,
    scheduled_at: Option<DateTime<Utc>>,
    dry_run: bool,
}

async fn check_request(conn: &mut PgConnection, body: &Map<String, Value>) -> ApiResult<Checked> {
    let mut errors = vec![];
    const KNOWN: &[&str] = &[
        "audience",
        "channel",
        "template",
        "content",
        "subject",
        "category",
        "triggerEvent",
        "scheduledAt",
        "dryRun",
    ];
    for k in body.keys() {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(FieldError::new(k, format!("Unknown field {k:?}.")));
        }
    }
    let channel = channel_of(body.get("channel"), &mut errors);
    let category = match body.get("category").and_then(Value::as_str) {
        None => {
            errors.push(FieldError::new(
                "category",
                "category is required (Transactional or Promotional).",
            ));
            None
        }
        Some(s) => category_from_label(s).or_else(|| {
            errors.push(FieldError::new(
                "category",
                "Must be one of: Transactional, Promotional.",
            ));
            None
        }),
    };
    let audience = match body.get("audience") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("audience", "audience is required."));
            None
        }
        Some(v) => match serde_path_to_error::deserialize::<_, Audience>(v.clone()) {
            Ok(a) => Some(a),
            Err(e) => {
                let path = e.path().to_string();
                errors.push(FieldError::new(
                    if path == "." {
                        "audience".to_string()
                    } else {
                        format!("audience.{path}")
                    },
                    e.into_inner().to_string(),
                ));
                None
            }
        },
    };
    if let Some(a) = &audience {
        check_audience(conn, a, &mut errors).await?;
    }
    let source = message_source(conn, body, None, &mut errors).await?;
    if let Some((content, subject)) = &source {
        // A template bound to a trigger may use variables a bulk send cannot fill.
        for (path, src) in [("template", Some(content)), ("subject", subject.as_ref())] {
            if let Some(src) = src {
                if let Err(m) = templates::check(src, None) {
                    if !errors.iter().any(|e| e.path.as_deref() == Some("content")) {
                        errors.push(FieldError::new(path, m));
                    }
                }
            }
        }
    }
    let trigger = match body.get("triggerEvent") {
        None | Some(Value::Null) => None,
        Some(Value::String(t))
            if t.starts_with("bulk.")
                && t.len() > 5
                && t.len() <= 100
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
        {
            Some(t.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "triggerEvent",
                "Must look like bulk.outage (letters, digits, . _ -, at most 100).",
            ));
            None
        }
    };
    let scheduled_at = match body.get("scheduledAt") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => Some(t.with_timezone(&Utc)),
            None => {
                errors.push(FieldError::new(
                    "scheduledAt",
                    "Must be an RFC 3339 timestamp.",
                ));
                None
            }
        },
    };
    let dry_run = match body.get("dryRun") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("dryRun", "Must be true or false."));
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::BadRequest(errors));
    }
    let (Some(audience), Some(channel), Some(category), Some((content, subject))) =
        (audience, channel, category, source)
    else {
        return Err(ApiError::bad_request("Incomplete bulk send."));
    };
    let trigger = trigger.unwrap_or_else(|| format!("bulk.{}", category.as_str()));
    Ok(Checked {
        audience,
        channel,
        category,
        content,
        subject,
        trigger,
        scheduled_at,
        dry_run,
    })
}

async fn check_audience(
    conn: &mut PgConnection,
    a: &Audience,
    errors: &mut Vec<FieldError>,
) -> ApiResult<()> {
    match a.kind.as_str() {
        "subscribers" => {
            if !a.contacts.is_empty() {
                errors.push(FieldError::new(
                    "audience.contacts",
                    "Only for audience type contacts.",
                ));
            }
        }
        "contacts" => {
            for f in ["plans", "routers", "buildings", "statuses"] {
                let given = match f {
                    "plans" => !a.plans.is_empty(),
                    "routers" => !a.routers.is_empty(),
                    "buildings" => !a.buildings.is_empty(),
                    _ => !a.statuses.is_empty(),
                };
                if given {
                    errors.push(FieldError::new(
                        format!("audience.{f}"),
                        "Only for audience type subscribers.",
                    ));
                }
            }
        }
        _ => {
            errors.push(FieldError::new(
                "audience.type",
                "Must be subscribers or contacts.",
            ));
            return Ok(());
        }
    }
    for (i, s) in a.statuses.iter().enumerate() {
        if !SUBSCRIBER_STATUSES.contains(&s.as_str()) {
            errors.push(FieldError::new(
                format!("audience.statuses.{i}"),
                format!("Must be one of: {}.", SUBSCRIBER_STATUSES.join(", ")),
            ));
        }
    }
    let lists: [(&str, &Vec<Uuid>, &str); 4] = [
        ("plans", &a.plans, "SELECT id FROM plans WHERE id = ANY($1) AND NOT deleted"),
        (
            "routers",
            &a.routers,
            "SELECT id FROM resources WHERE id = ANY($1) AND resource_type = 'Router' AND NOT deleted",
        ),
        (
            "buildings",
            &a.buildings,
            "SELECT id FROM buildings WHERE id = ANY($1) AND NOT deleted",
        ),
        ("contacts", &a.contacts, "SELECT id FROM contacts WHERE id = ANY($1)"),
    ];
    for (name, ids, sql) in lists {
        if ids.is_empty() {
            continue;
        }
        let found: HashSet<Uuid> = sqlx::query_scalar(sql)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        for (i, id) in ids.iter().enumerate() {
            if !found.contains(id) {
                errors.push(FieldError::new(
                    format!("audience.{name}.{i}"),
                    format!("No such {}: {id}.", name.trim_end_matches('s')),
                ));
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/support/messages/bulk", tag = "messages", request_body = BulkRequest,
    extensions(("x-references" = json!(["template", "audience.plans", "audience.routers", "audience.buildings", "audience.contacts"])),
        ("x-rules" = json!(["content, subject, template: a template that parses and uses only the variables firstName, lastName, fullName, accountNumber, phoneNumber"]))),
    responses(
        (status = 202, body = BulkAccepted, description = "Accepted: the parent message; sending runs in the background"),
        (status = 200, body = DryRun, description = "dryRun: the count and a sample, nothing stored"),
        (status = 400, description = "Every bad field named (audience.*, channel, template, content, subject, category, triggerEvent, scheduledAt, dryRun)"),
        (status = 401), (status = 403)))]
async fn create(
    State(BulkState(b)): State<BulkState>,
    p: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.require(SUPPORT, "support.messages.bulk")?;
    let Value::Object(body) = parse_body(&body)? else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let mut tx = b.ctx.pool.begin().await?;
    let c = check_request(&mut tx, &body).await?;
    let plan = recipients(&mut tx, &c.audience, c.channel, c.category)
        .await
        .map_err(ApiError::Internal)?;
    if c.dry_run {
        let mut sample = vec![];
        for r in plan.send.iter().take(SAMPLE) {
            let content = templates::render(&c.content, &Value::Object(r.vars.clone()))
                .map_err(|e| ApiError::field("template", e.to_string()))?;
            sample.push(Sample {
                recipient: r.address.clone(),
                name: r.name.clone(),
                content,
            });
        }
        let dry = DryRun {
            recipient_count: plan.send.len(),
            suppressed: plan.suppressed.len(),
            no_address: plan.no_address,
            duplicates: plan.duplicates,
            sample,
        };
        return Ok((StatusCode::OK, Json(json!(dry))));
    }
    let asked = c.scheduled_at.unwrap_or_else(Utc::now);
    let start = match c.category {
        NotificationCategory::Promotional => promotional_start(asked, b.settings.promotional_hours),
        NotificationCategory::Transactional => asked,
    };
    let id = Uuid::now_v7();
    let summary = format!(
        "{} bulk send to {} recipient{}",
        category_label(c.category),
        plan.send.len(),
        if plan.send.len() == 1 { "" } else { "s" }
    );
    sqlx::query(
        "INSERT INTO messages (id, recipient, type, content, subject, status, trigger_event, sent_by,
             bulk_send, category, audience, recipient_count, scheduled_at)
         VALUES ($1, $2, $3, $4, $5, 'Scheduled', $6, $7, true, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(&summary)
    .bind(channel_label(c.channel))
    .bind(&c.content)
    .bind(&c.subject)
    .bind(&c.trigger)
    .bind(p.staff_id())
    .bind(category_label(c.category))
    .bind(json!(c.audience))
    .bind(plan.send.len() as i32)
    .bind(start)
    .execute(&mut *tx)
    .await?;
    let doc = b
        .colls
        .messages
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bulk parent vanished")))?;
    tx.commit().await?;
    b.wake.notify_one();
    let accepted = BulkAccepted {
        doc: b.colls.messages.present(&p, &doc),
        recipient_count: plan.send.len(),
        suppressed: plan.suppressed.len(),
        no_address: plan.no_address,
        duplicates: plan.duplicates,
        scheduled_at: start,
        message: if start > Utc::now() {
            "Bulk send scheduled.".into()
        } else {
            "Bulk send accepted.".into()
        },
    };
    Ok((StatusCode::ACCEPTED, Json(json!(accepted))))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Progress {
    #[schema(value_type = Object)]
    doc: Value,
    /// Children by status: Queued, Accepted, Sent, Delivered, Undelivered, Expired,
    /// Failed, Skipped.
    #[schema(value_type = Object)]
    counts: Map<String, Value>,
    total: i64,
    /// Not yet handed to the network (Queued, Accepted).
    queued: i64,
    /// On the network or delivered (Sent, Delivered).
    sent: i64,
    /// Failed, Undelivered, Expired.
    failed: i64,
    skipped: i64,
}

async fn parent(
    b: &Bulk,
    p: &Principal,
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> ApiResult<(Uuid, Value)> {
    check(&b.colls.messages, p, Operation::Read, "read messages")?;
    let id = parse_id(id)?;
    let doc = b.colls.messages.find_scoped(conn, p, id, lock).await?;
    if doc["bulkSend"] != json!(true) {
        return Err(ApiError::not_found("Bulk send"));
    }
    Ok((id, doc))
}

#[utoipa::path(get, path = "/api/support/messages/bulk/{id}", tag = "messages", params(("id" = Uuid, Path)),
    responses((status = 200, body = Progress), (status = 401), (status = 403), (status = 404)))]
async fn progress(
    State(BulkState(b)): State<BulkState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Progress>> {
    let mut conn = b.ctx.pool.acquire().await?;
    let (id, doc) = parent(&b, &p, &mut conn, &id, false).await?;
    let rows: Vec<(MessageStatus, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM messages WHERE parent = $1 GROUP BY status")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    let get = |these: &[MessageStatus]| -> i64 {
        rows.iter()
            .filter(|(s, _)| these.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    use MessageStatus as S;
    Ok(Json(Progress {
        total: rows.iter().map(|(_, n)| n).sum(),
        queued: get(&[S::Queued, S::Accepted]),
        sent: get(&[S::Sent, S::Delivered]),
        failed: get(&[S::Failed, S::Undelivered, S::Expired]),
        skipped: get(&[S::Skipped]),
        counts: rows
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect(),
        doc: b.colls.messages.present(&p, &doc),
    }))
}

#[utoipa::path(post, path = "/api/support/messages/bulk/{id}/cancel", tag = "messages", params(("id" = Uuid, Path)),
    responses((status = 200, description = "{doc, message}: cancelled"), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "It has already started (or was cancelled)")))]
async fn cancel(
    State(BulkState(b)): State<BulkState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    p.require(SUPPORT, "support.messages.bulk")?;
    let mut tx = b.ctx.pool.begin().await?;
    // The worker holds the row while it queues a send, so a cancel waits for it
    // and then finds it started.
    let (id, doc) = parent(&b, &p, &mut tx, &id, true).await?;
    if doc["status"] != MessageStatus::Scheduled {
        return Err(ApiError::conflict_field(
            "status",
            format!(
                "This bulk send is {} and can no longer be cancelled.",
                doc["status"].as_str().unwrap_or("?")
            ),
        ));
    }
    sqlx::query("UPDATE messages SET status = 'Cancelled', updated_at = now(), status_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let doc = b
        .colls
        .messages
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bulk parent vanished")))?;
    tx.commit().await?;
    Ok(Json(
        json!({"doc": b.colls.messages.present(&p, &doc), "message": "Bulk send cancelled."}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eat(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        EAT.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn promotional_sends_wait_for_eight_in_the_morning_eat() {
        assert_eq!(
            promotional_start(eat(2026, 12, 1, 9, 30), (8, 18)),
            eat(2026, 12, 1, 9, 30)
        );
        assert_eq!(
            promotional_start(eat(2026, 12, 1, 6, 0), (8, 18)),
            eat(2026, 12, 1, 8, 0)
        );
        assert_eq!(
            promotional_start(eat(2026, 12, 1, 18, 0), (8, 18)),
            eat(2026, 12, 2, 8, 0)
        );
        assert_eq!(
            promotional_start(eat(2026, 12, 31, 23, 59), (8, 18)),
            eat(2027, 1, 1, 8, 0)
        );
        assert_eq!(
            promotional_start(eat(2026, 12, 1, 17, 59), (8, 18)),
            eat(2026, 12, 1, 17, 59)
        );
        assert_eq!(
            promotional_start(eat(2026, 12, 1, 23, 59), (0, 24)),
            eat(2026, 12, 1, 23, 59)
        );
    }
}
