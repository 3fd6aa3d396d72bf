//! Processing of stored messages: who sent it, what it says, which building, the
//! lead in CRM, the reply.
//!
//! A worker claims due rows with `FOR UPDATE SKIP LOCKED` and moves their
//! `next_attempt_at` a lease into the future in the same statement, then works
//! without holding a lock or a connection across the CRM and Cloud API calls. A
//! worker that dies mid-way leaves the row to come due again when the lease ends;
//! the CRM call carries `Idempotency-Key: wa-parser-lead-<row id>`, so processing
//! it again creates no second lead.
//!
//! A message's outcome and an SMS reply request (the `notification.requested.waParser`
//! event for Notify) are written in one transaction; a WhatsApp reply is sent
//! after that commit and its result recorded (`reply_status` Pending -> Sent or
//! Failed; transient failures are retried with the same backoff).

use std::sync::Arc;
use std::time::Duration;

use isp_events::payloads::{
    NotificationCategory, NotificationChannel, NotificationRequest, WaParserNotificationRequested,
};
use isp_platform::client::ServiceClient;
use isp_platform::{ApiError, ServiceContext};
use serde_json::{json, Value};
use sqlx::FromRow;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::inbound::{Channel, Outcome, ReplyStatus};
use crate::parse::{self, Parsed};
use crate::resolve::{self, Building, Resolved};
use crate::settings::Settings;

/// CRM's intake operation and the one scope wa-parser's token carries for it.
pub const CRM_INTAKE_PATH: &str = "/api/crm/intake/leads";
pub const CRM_INTAKE_SCOPE: &str = "crm.intake.create";
/// A WhatsApp reply that failed this many times for transient reasons is given up.
const MAX_REPLY_ATTEMPTS: i32 = 8;
/// Messages processed at once per replica.
const CONCURRENCY: usize = 16;

pub struct Worker {
    ctx: Arc<ServiceContext>,
    settings: Settings,
    crm: ServiceClient,
    http: reqwest::Client,
    wake: Notify,
}

#[derive(Debug, Clone, FromRow)]
struct Row {
    id: Uuid,
    channel: Channel,
    sender: Option<String>,
    sender_bsuid: Option<String>,
    reply_to: Option<String>,
    message_type: String,
    raw_text: Option<String>,
    outcome: Outcome,
    reply: Option<String>,
    reply_status: Option<ReplyStatus>,
    attempts: i32,
}

/// A final outcome.
#[derive(Debug)]
struct Done {
    outcome: Outcome,
    reason: Option<String>,
    partner: Option<Uuid>,
    lead: Option<Uuid>,
    lead_key: Option<String>,
    reply: Option<String>,
}

impl Done {
    fn new(outcome: Outcome) -> Done {
        Done {
            outcome,
            reason: None,
            partner: None,
            lead: None,
            lead_key: None,
            reply: None,
        }
    }
}

enum Decision {
    Done(Done),
    /// CRM could not be reached; try again later.
    Retry {
        partner: Uuid,
        reason: String,
    },
}

#[derive(FromRow)]
struct Partner {
    id: Uuid,
    full_name: String,
    status: isp_events::options::PartnerStatus,
}

impl Worker {
    pub fn new(ctx: Arc<ServiceContext>, settings: Settings) -> anyhow::Result<Arc<Self>> {
        let mut crm = ctx.client(&[CRM_INTAKE_SCOPE])?;
        if let Some(url) = &settings.crm_url {
            crm = crm.with_base(url.clone());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Arc::new(Worker {
            ctx,
            settings,
            crm,
            http,
            wake: Notify::new(),
        }))
    }

    /// A new message was stored.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Keeps up to [`CONCURRENCY`] messages in flight: a slot freed by one message
    /// is filled by the next due one at once, rather than a whole batch waiting
    /// for its slowest member.
    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            let shutdown = self.ctx.shutdown.clone();
            let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            loop {
                let first = tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                };
                let free = slots.available_permits() + 1;
                match self.claim(free as i64).await {
                    Ok(rows) if !rows.is_empty() => {
                        let mut permit = Some(first);
                        for r in rows {
                            let p = match permit.take() {
                                Some(p) => p,
                                None => match slots.clone().acquire_owned().await {
                                    Ok(p) => p,
                                    Err(_) => break,
                                },
                            };
                            let w = self.clone();
                            tokio::spawn(async move {
                                w.process(r).await;
                                drop(p);
                            });
                        }
                        continue;
                    }
                    Ok(_) => drop(first),
                    Err(e) => {
                        drop(first);
                        tracing::warn!(error = %e, "claiming inbound messages failed");
                    }
                }
                // Woken by a new message; otherwise a short poll finds retries that
                // came due and messages stored by another replica.
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }

    async fn claim(&self, limit: i64) -> anyhow::Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(
            "UPDATE inbound_messages m SET next_attempt_at = now() + make_interval(secs => $2),
                 attempts = m.attempts + 1, updated_at = now()
             WHERE m.id IN (
                 SELECT id FROM inbound_messages
                 WHERE (outcome IN ('Pending', 'CRM unavailable') OR reply_status = 'Pending')
                   AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING m.id, m.channel, m.sender, m.sender_bsuid, m.reply_to, m.message_type,
                 m.raw_text, m.outcome, m.reply, m.reply_status, m.attempts",
        )
        .bind(limit)
        .bind(self.settings.lease.as_secs_f64())
        .fetch_all(&self.ctx.pool)
        .await?)
    }

    async fn process(&self, mut row: Row) {
        if row.outcome.open() {
            match self.decide(&row).await {
                Ok(Decision::Done(d)) => match self.finish(&row, d).await {
                    Ok((reply, status)) => {
                        row.reply = reply;
                        row.reply_status = status;
                    }
                    Err(e) => {
                        tracing::warn!(message = %row.id, error = %e, "recording the outcome failed; retried later");
                        self.later(&row, &e.to_string()).await;
                        return;
                    }
                },
                Ok(Decision::Retry { partner, reason }) => {
                    tracing::warn!(message = %row.id, %reason, attempts = row.attempts, "CRM unavailable; the message is kept and retried");
                    let r = sqlx::query(
                        "UPDATE inbound_messages SET outcome = 'CRM unavailable', reason = $2, partner = $3,
                             next_attempt_at = now() + make_interval(secs => $4), updated_at = now()
                         WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(&reason)
                    .bind(partner)
                    .bind(self.settings.backoff(row.attempts).as_secs_f64())
                    .execute(&self.ctx.pool)
                    .await;
                    if let Err(e) = r {
                        tracing::warn!(message = %row.id, error = %e, "recording the retry failed");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(message = %row.id, error = %e, "processing failed; retried later");
                    self.later(&row, &e.to_string()).await;
                    return;
                }
            }
        }
        if row.reply_status == Some(ReplyStatus::Pending) && row.channel == Channel::WhatsApp {
            self.send_whatsapp(&row).await;
        }
    }

    /// Puts the row back with backoff after an unexpected error.
    async fn later(&self, row: &Row, error: &str) {
        let _ = sqlx::query(
            "UPDATE inbound_messages SET reason = $2, next_attempt_at = now() + make_interval(secs => $3),
                 updated_at = now() WHERE id = $1",
        )
        .bind(row.id)
        .bind(error)
        .bind(self.settings.backoff(row.attempts).as_secs_f64())
        .execute(&self.ctx.pool)
        .await;
    }

    async fn sender(&self, row: &Row) -> anyhow::Result<Option<Partner>> {
        let pool = &self.ctx.pool;
        let mut found = None;
        if let Some(e164) = row
            .sender
            .as_deref()
            .and_then(|s| isp_platform::phone::normalize(s).ok())
        {
            found = sqlx::query_as::<_, Partner>(
                "SELECT id, full_name, status FROM partners WHERE phone_number = $1 AND NOT deleted
                 ORDER BY status = 'Active' DESC, updated_at DESC LIMIT 1",
            )
            .bind(&e164)
            .fetch_optional(pool)
            .await?;
            if let (Some(p), Some(bsuid)) = (&found, &row.sender_bsuid) {
                // The number is the authority: a BSUID follows it to its partner.
                sqlx::query(
                    "INSERT INTO partner_bsuids (bsuid, partner) VALUES ($1, $2)
                     ON CONFLICT (bsuid) DO UPDATE SET partner = EXCLUDED.partner, learned_at = now()
                     WHERE partner_bsuids.partner <> EXCLUDED.partner",
                )
                .bind(bsuid)
                .bind(p.id)
                .execute(pool)
                .await?;
            }
        }
        if found.is_none() {
            if let Some(bsuid) = &row.sender_bsuid {
                found = sqlx::query_as::<_, Partner>(
                    "SELECT p.id, p.full_name, p.status FROM partner_bsuids b
                     JOIN partners p ON p.id = b.partner AND NOT p.deleted WHERE b.bsuid = $1",
                )
                .bind(bsuid)
                .fetch_optional(pool)
                .await?;
            }
        }
        Ok(found)
    }

    async fn decide(&self, row: &Row) -> anyhow::Result<Decision> {
        let Some(partner) = self.sender(row).await? else {
            let reason = match (&row.sender, &row.sender_bsuid) {
                (None, None) => {
                    "The message carries neither a phone number nor a business-scoped user id."
                        .to_string()
                }
                (Some(s), _) => format!("No partner has the number {s}."),
                (None, Some(b)) => {
                    format!("No partner is known by the business-scoped user id {b}.")
                }
            };
            tracing::info!(message = %row.id, %reason, "message from an unknown sender ignored (no reply)");
            return Ok(Decision::Done(Done {
                outcome: Outcome::UnknownSender,
                reason: Some(reason),
                ..Done::new(Outcome::UnknownSender)
            }));
        };
        let first_name = partner
            .full_name
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        // Each branch below names the outcome.
        let mut done = Done {
            partner: Some(partner.id),
            ..Done::new(Outcome::Pending)
        };
        if partner.status != isp_events::options::PartnerStatus::Active {
            tracing::info!(message = %row.id, partner = %partner.id, status = %partner.status, "message from a partner who is not Active");
            done.outcome = Outcome::InactivePartner;
            done.reason = Some(format!("The partner is {}.", partner.status));
            done.reply = Some(format!(
                "Hello {first_name}, your partner account is not active ({}), so we cannot take leads from you yet. Please contact our office.",
                partner.status
            ));
            return Ok(Decision::Done(done));
        }
        if row.message_type != "text" {
            done.outcome = Outcome::NotText;
            done.reason = Some(format!("A {} message.", row.message_type));
            done.reply = Some(format!(
                "Please send your lead as a text message, like this: {}",
                parse::EXAMPLE
            ));
            return Ok(Decision::Done(done));
        }
        let text = row.raw_text.clone().unwrap_or_default();
        let lead = match parse::parse(&text) {
            Parsed::Help => {
                done.outcome = Outcome::Help;
                done.reply = Some(parse::help_text());
                return Ok(Decision::Done(done));
            }
            Parsed::Invalid(problems) => {
                done.outcome = Outcome::ParseError;
                done.reason = Some(problems.join(" "));
                done.reply = Some(parse::problems_text(&problems));
                return Ok(Decision::Done(done));
            }
            Parsed::Lead(l) => l,
        };
        let buildings: Vec<Building> = sqlx::query_as::<_, (Uuid, String)>(
            "SELECT id, name FROM buildings WHERE partner = $1 AND NOT deleted ORDER BY name, id",
        )
        .bind(partner.id)
        .fetch_all(&self.ctx.pool)
        .await?
        .into_iter()
        .map(|(id, name)| Building { id, name })
        .collect();
        let building = match resolve::resolve(lead.building.as_deref(), &buildings) {
            Resolved::One(b) => b,
            Resolved::None => {
                done.outcome = Outcome::ParseError;
                done.reason = Some("The partner looks after no building in CRM.".into());
                done.reply = Some(format!(
                    "Hello {first_name}, we have no building registered for you yet, so we cannot place this lead. Please call our office."
                ));
                return Ok(Decision::Done(done));
            }
            Resolved::Ask { named } => {
                let list = buildings
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let example = format!(
                    "LEAD {}, {}, {}, {}",
                    lead.name,
                    local(&lead.phone),
                    lead.unit,
                    buildings[0].name
                );
                done.outcome = Outcome::ParseError;
                done.reply = Some(match &named {
                    None => format!("Which building is this lead in? You look after: {list}. Send it again with the building, like: {example}"),
                    Some(n) => format!("We could not tell which building \"{n}\" is. You look after: {list}. Send it again with one of these, like: {example}"),
                });
                done.reason = Some(match named {
                    None => format!("No building named; the partner looks after {list}."),
                    Some(n) => format!("Building {n:?} is unknown or ambiguous among {list}."),
                });
                return Ok(Decision::Done(done));
            }
        };
        let lead_key = format!(
            "{}|{}|{}|{}",
            partner.id,
            building.id,
            lead.unit.to_lowercase(),
            lead.phone
        );
        let earlier: Option<Option<Uuid>> = sqlx::query_scalar(
            "SELECT lead FROM inbound_messages WHERE lead_key = $1 AND outcome = 'Lead created' AND id <> $2
             ORDER BY received_at LIMIT 1",
        )
        .bind(&lead_key)
        .bind(row.id)
        .fetch_optional(&self.ctx.pool)
        .await?;
        if let Some(earlier) = earlier {
            done.outcome = Outcome::Duplicate;
            done.lead = earlier;
            done.reason = Some("The same lead (partner, building, unit, phone) was created from an earlier message.".into());
            done.reply = Some(format!(
                "We already have this lead: {}, unit {}, {}. Our sales team will be in touch with them.",
                lead.name, lead.unit, building.name
            ));
            return Ok(Decision::Done(done));
        }
        let body = json!({
            "partner": partner.id,
            "building": building.id,
            "unitNumber": lead.unit,
            "subscriberName": lead.name,
            "subscriberPhone": lead.phone,
            "notes": text,
        });
        let key = format!("wa-parser-lead-{}", row.id);
        match self.crm.post(CRM_INTAKE_PATH, &body, &key).await {
            Ok((_, answer)) => {
                let lead_id = answer["doc"]["id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok());
                done.outcome = Outcome::LeadCreated;
                done.lead = lead_id;
                done.lead_key = Some(lead_key);
                done.reply = Some(confirmation(
                    &first_name,
                    &lead,
                    &building,
                    lead_id,
                    &answer,
                ));
                Ok(Decision::Done(done))
            }
            Err(ApiError::BadRequest(errs)) | Err(ApiError::Conflict(errs)) => {
                let reason = errs
                    .iter()
                    .map(|e| match &e.path {
                        Some(p) => format!("{p}: {}", e.message),
                        None => e.message.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                done.outcome = Outcome::Rejected;
                done.reason = Some(format!("CRM refused the lead: {reason}"));
                done.reply = Some(format!(
                    "Sorry {first_name}, we could not record the lead for {} (unit {}). Our office has been told and will look into it.",
                    lead.name, lead.unit
                ));
                Ok(Decision::Done(done))
            }
            Err(e) => Ok(Decision::Retry {
                partner: partner.id,
                reason: format!("CRM unavailable: {e}"),
            }),
        }
    }

    /// Records a final outcome; an SMS reply is requested from Notify in the same
    /// transaction. Returns the reply and its status.
    async fn finish(
        &self,
        row: &Row,
        d: Done,
    ) -> anyhow::Result<(Option<String>, Option<ReplyStatus>)> {
        let mut tx = self.ctx.pool.begin().await?;
        let (status, reply_id) = match (&d.reply, row.channel, &row.reply_to) {
            (None, _, _) | (_, _, None) => (None, None),
            (Some(text), Channel::Sms, Some(to)) => {
                let id = Uuid::now_v7();
                let req = NotificationRequest {
                    id,
                    channel: NotificationChannel::Sms,
                    recipient: to.clone(),
                    subject: None,
                    body: text.clone(),
                    category: NotificationCategory::Transactional,
                    reference: Some(row.id.to_string()),
                };
                isp_events::outbox::enqueue(
                    &mut tx,
                    self.ctx.name,
                    &WaParserNotificationRequested(req),
                )
                .await?;
                (Some(ReplyStatus::Requested), Some(id.to_string()))
            }
            (Some(_), _, Some(_)) => (Some(ReplyStatus::Pending), None),
        };
        let reply = if status.is_some() { d.reply } else { None };
        sqlx::query(
            "UPDATE inbound_messages SET outcome = $2, reason = $3, partner = $4, lead = $5, lead_key = $6,
                 reply = $7, reply_status = $8, reply_id = $9, processed_at = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(d.outcome)
        .bind(&d.reason)
        .bind(d.partner)
        .bind(d.lead)
        .bind(&d.lead_key)
        .bind(&reply)
        .bind(status)
        .bind(&reply_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(message = %row.id, outcome = %d.outcome, lead = ?d.lead, "inbound message processed");
        Ok((reply, status))
    }

    /// Sends a WhatsApp reply through the Cloud API's messages endpoint, or logs it
    /// when no Cloud API URL is configured.
    async fn send_whatsapp(&self, row: &Row) {
        let (Some(to), Some(text)) = (&row.reply_to, &row.reply) else {
            return;
        };
        let result = match &self.settings.cloud_api_url {
            None => {
                tracing::info!(message = %row.id, %to, reply = %text, "WhatsApp reply (log-only: ISP_WA_PARSER_CLOUD_API_URL is not set)");
                Ok("log-only".to_string())
            }
            Some(base) => self.post_message(base, to, text).await,
        };
        let (status, id, error, retry) = match result {
            Ok(id) => (ReplyStatus::Sent, Some(id), None, false),
            Err((msg, transient)) if transient && row.attempts < MAX_REPLY_ATTEMPTS => {
                (ReplyStatus::Pending, None, Some(msg), true)
            }
            Err((msg, _)) => (ReplyStatus::Failed, None, Some(msg), false),
        };
        if let Some(e) = &error {
            tracing::warn!(message = %row.id, error = %e, retry, "WhatsApp reply not sent");
        }
        let backoff = if retry {
            self.settings.backoff(row.attempts).as_secs_f64()
        } else {
            0.0
        };
        let r = sqlx::query(
            "UPDATE inbound_messages SET reply_status = $2, reply_id = $3, reply_error = $4,
                 next_attempt_at = now() + make_interval(secs => $5), updated_at = now()
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(status)
        .bind(id)
        .bind(error)
        .bind(backoff)
        .execute(&self.ctx.pool)
        .await;
        if let Err(e) = r {
            tracing::warn!(message = %row.id, error = %e, "recording the reply failed");
        }
    }

    /// `Err((message, transient))`.
    async fn post_message(
        &self,
        base: &str,
        to: &str,
        text: &str,
    ) -> Result<String, (String, bool)> {
        let url = format!("{base}/{}/messages", self.settings.phone_number_id);
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "type": "text",
            "text": {"preview_url": false, "body": text},
        });
        // A user known only by a business-scoped id is addressed by it.
        if to.chars().all(|c| c.is_ascii_digit()) {
            body["to"] = json!(to);
        } else {
            body["recipient"] = json!(to);
        }
        let res = self
            .http
            .post(&url)
            .bearer_auth(&self.settings.cloud_api_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| (format!("Cloud API unreachable: {e}"), true))?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v["messages"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string());
        }
        let msg = format!(
            "Cloud API {status}: {} (code {})",
            v["error"]["message"].as_str().unwrap_or("no message"),
            v["error"]["code"]
        );
        Err((msg, status.is_server_error() || status.as_u16() == 429))
    }
}

/// `+254712345678` -> `0712345678`, how partners write numbers.
fn local(e164: &str) -> String {
    match e164.strip_prefix("+254") {
        Some(rest) => format!("0{rest}"),
        None => e164.to_string(),
    }
}

fn confirmation(
    first_name: &str,
    lead: &parse::Lead,
    building: &Building,
    lead_id: Option<Uuid>,
    answer: &Value,
) -> String {
    let new_unit = if answer["unit"]["created"] == true {
        " (a new unit for us)"
    } else {
        ""
    };
    let reference = lead_id
        .map(|id| {
            let s = id.simple().to_string();
            format!(" Ref {}.", &s[s.len() - 6..].to_uppercase())
        })
        .unwrap_or_default();
    format!(
        "Thank you {first_name}! Lead received: {} ({}), unit {}{new_unit}, {}. Our sales team will contact them.{reference}",
        lead.name,
        local(&lead.phone),
        lead.unit,
        building.name
    )
}
