//! Network tickets from NOC's Zabbix events (SPEC 3.4, GATEWAYS.md section 5).
//!
//! One High-priority `Network` ticket per Zabbix problem event id, named
//! `NET-<event id>` ([`network_ticket_id`]) so the NOC can answer Zabbix with the
//! ticket's id before this ticket exists. The unique `zabbix_event_id` makes a
//! redelivered or escalated problem a no-op. An update adds a note. A recovery adds a
//! note and, when `ISP_SUPPORT_RESOLVE_ON_RECOVERY` is on (the default), resolves
//! the ticket; one that arrives before its problem is kept and applied when the
//! problem comes, and a second recovery changes nothing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use isp_events::outbox::enqueue;
use isp_events::payloads::{
    network_ticket_id, NetworkProblemUpdated, TicketCreated, TicketSnapshot, TicketUpdated,
    ZabbixEvent,
};
use isp_platform::collection::Collection;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Clone)]
pub struct NetworkSettings {
    pub resolve_on_recovery: bool,
    pub timezone: Tz,
    pub tickets: Arc<Collection>,
}

impl NetworkSettings {
    fn local(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.timezone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }
}

/// Publishes the ticket as it now stands in `tx`.
async fn publish(
    tx: &mut PgConnection,
    s: &NetworkSettings,
    id: Uuid,
    created: bool,
) -> anyhow::Result<()> {
    let doc = s
        .tickets
        .fetch(tx, id, false)
        .await
        .map_err(|e| anyhow::anyhow!("reading ticket {id}: {e:?}"))?
        .ok_or_else(|| anyhow::anyhow!("ticket {id} vanished"))?;
    let snap: TicketSnapshot = serde_json::from_value(doc)?;
    if created {
        enqueue(tx, "support", &TicketCreated(snap)).await?;
    } else {
        enqueue(tx, "support", &TicketUpdated(snap)).await?;
    }
    Ok(())
}

fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        s
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

pub async fn problem(
    tx: &mut PgConnection,
    s: &NetworkSettings,
    z: &ZabbixEvent,
) -> anyhow::Result<()> {
    // The NOC router this host is: by management IP first, else by name.
    let router: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, resource_name FROM resources
         WHERE resource_type = 'Router' AND NOT deleted
           AND ((management_ip IS NOT NULL AND management_ip = $1) OR lower(resource_name) = lower($2))
         ORDER BY (management_ip IS NOT DISTINCT FROM $1) DESC, updated_at DESC LIMIT 1",
    )
    .bind(&z.host_ip)
    .bind(&z.host)
    .fetch_optional(&mut *tx)
    .await?;
    let affected: Option<i64> = match &router {
        Some((id, _)) => Some(
            sqlx::query_scalar(
                "SELECT count(*) FROM subscribers WHERE router = $1 AND status <> 'Deactivated'",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?,
        ),
        None => None,
    };
    let host = match &z.host_ip {
        Some(ip) => format!("{} ({ip})", z.host),
        None => z.host.clone(),
    };
    let mut description = format!(
        "Zabbix problem {}: {}\n\nHost: {host}\nSeverity: {}\nStarted: {}",
        z.event_id,
        z.name,
        z.severity,
        s.local(z.at)
    );
    if let (Some((_, name)), Some(n)) = (&router, affected) {
        description.push_str(&format!(
            "\nRouter: {name}, {n} subscriber{} behind it",
            if n == 1 { "" } else { "s" }
        ));
    }
    if let Some(t) = &z.trigger_id {
        description.push_str(&format!("\nZabbix trigger: {t}"));
    }
    let subject = clip(format!("{}: {} on {}", z.severity, z.name, z.host), 500);
    let early: Option<(DateTime<Utc>, String)> = sqlx::query_as(
        "DELETE FROM early_recoveries WHERE zabbix_event_id = $1 RETURNING recovered_at, recovery_event_id",
    )
    .bind(&z.event_id)
    .fetch_optional(&mut *tx)
    .await?;
    let mut notes = vec![];
    let mut status = "Open";
    if let Some((at, rec)) = &early {
        notes.push(recovery_note(s, *at, rec));
        if s.resolve_on_recovery {
            status = "Resolved";
        }
    }
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO tickets (id, ticket_id, kind, subject, description, status, priority,
             zabbix_event_id, network_host, network_host_ip, network_severity, problem_started_at,
             resource, affected_subscribers, notes, resolved_at)
         VALUES ($1, $2, 'Network', $3, $4, $5, 'High', $6, $7, $8, $9, $10, $11, $12, $13,
             CASE WHEN $5 = 'Resolved' THEN now() END)
         ON CONFLICT (zabbix_event_id) DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(network_ticket_id(&z.event_id))
    .bind(&subject)
    .bind(&description)
    .bind(status)
    .bind(&z.event_id)
    .bind(&z.host)
    .bind(&z.host_ip)
    .bind(&z.severity)
    .bind(z.at)
    .bind(router.as_ref().map(|r| r.0))
    .bind(affected.map(|n| n as i32))
    .bind(json!(notes))
    .fetch_optional(&mut *tx)
    .await?;
    match id {
        Some(id) => publish(tx, s, id, true).await,
        None => Ok(()), // this problem already has its ticket
    }
}

fn recovery_note(
    s: &NetworkSettings,
    at: DateTime<Utc>,
    recovery_event: &str,
) -> serde_json::Value {
    json!({
        "at": at,
        "source": "zabbix",
        "recoveryEventId": recovery_event,
        "text": format!("Zabbix reports the problem resolved (recovery event {recovery_event}) at {}.", s.local(at)),
    })
}

pub async fn recovered(
    tx: &mut PgConnection,
    s: &NetworkSettings,
    z: &ZabbixEvent,
) -> anyhow::Result<()> {
    let problem_id = z.recovery_of.as_deref().unwrap_or(&z.event_id);
    let ticket: Option<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, status, notes @> jsonb_build_array(jsonb_build_object('recoveryEventId', $2::text))
         FROM tickets WHERE zabbix_event_id = $1 FOR UPDATE",
    )
    .bind(problem_id)
    .bind(&z.event_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, status, noted)) = ticket else {
        sqlx::query(
            "INSERT INTO early_recoveries (zabbix_event_id, recovered_at, recovery_event_id)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(problem_id)
        .bind(z.at)
        .bind(&z.event_id)
        .execute(&mut *tx)
        .await?;
        return Ok(());
    };
    if noted || status == isp_events::options::TicketStatus::Closed {
        return Ok(());
    }
    let resolve = s.resolve_on_recovery && status != isp_events::options::TicketStatus::Resolved;
    sqlx::query(
        "UPDATE tickets SET notes = notes || jsonb_build_array($2::jsonb),
             status = CASE WHEN $3 THEN 'Resolved' ELSE status END,
             resolved_at = CASE WHEN $3 THEN now() ELSE resolved_at END,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(recovery_note(s, z.at, &z.event_id))
    .bind(resolve)
    .execute(&mut *tx)
    .await?;
    publish(tx, s, id, false).await
}

pub async fn updated(
    tx: &mut PgConnection,
    s: &NetworkSettings,
    u: &NetworkProblemUpdated,
) -> anyhow::Result<()> {
    let ticket: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM tickets WHERE zabbix_event_id = $1 FOR UPDATE")
            .bind(&u.event_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, status)) = ticket else {
        tracing::warn!(event = %u.event_id, "Zabbix update for a problem without a ticket");
        return Ok(());
    };
    if status == isp_events::options::TicketStatus::Closed {
        return Ok(());
    }
    let who = u.user.as_deref().unwrap_or("Zabbix");
    let what = u.action.as_deref().unwrap_or("updated the problem");
    let text = match &u.message {
        Some(m) => format!("{who} {what} in Zabbix: {m}"),
        None => format!("{who} {what} in Zabbix."),
    };
    let note =
        json!({"at": u.at, "source": "zabbix", "author": u.user, "action": u.action, "text": text});
    sqlx::query(
        "UPDATE tickets SET notes = notes || jsonb_build_array($2::jsonb),
             network_severity = COALESCE($3, network_severity), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(note)
    .bind(&u.severity)
    .execute(&mut *tx)
    .await?;
    publish(tx, s, id, false).await
}
