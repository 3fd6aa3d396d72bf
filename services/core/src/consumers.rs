//! Events Core consumes from CRM.

use std::sync::Arc;

use isp_events::payloads::{BuildingSnapshot, IpSubnetSnapshot, LeadConverted, PartnerUpdated};
use isp_events::{entity_change, Change, CloudEvent, EventHandler, Projection};
use isp_platform::collection::Collection;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct CrmEvents {
    pub partners: Arc<Collection>,
}

impl EventHandler for CrmEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(c) = ev.payload::<LeadConverted>()? {
            return self.count_referral(tx, &c).await;
        }
        match entity_change::<BuildingSnapshot>(ev)? {
            Some(b) => upsert_building(tx, &self.partners, &b).await,
            None => Ok(()),
        }
    }
}

impl CrmEvents {
    /// One increment per converted lead, however often the event arrives.
    async fn count_referral(&self, tx: &mut PgConnection, c: &LeadConverted) -> anyhow::Result<()> {
        let Some(partner) = c.referred_by else {
            return Ok(());
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1)")
                .bind(partner)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            tracing::warn!(%partner, lead = %c.lead_id, "lead.converted names an unknown partner; not counted");
            return Ok(());
        }
        let inserted = sqlx::query(
            "INSERT INTO partner_referrals (lead_id, partner_id, subscriber_id) VALUES ($1, $2, $3) ON CONFLICT (lead_id) DO NOTHING",
        )
        .bind(c.lead_id)
        .bind(partner)
        .bind(c.subscriber_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(());
        }
        sqlx::query("UPDATE partners SET referral_count = referral_count + 1, updated_at = now() WHERE id = $1")
            .bind(partner)
            .execute(&mut *tx)
            .await?;
        publish_partner(tx, &self.partners, partner).await
    }
}

/// CRM's buildings, for the partners' `buildings` lists.
const BUILDINGS: Projection = Projection::new("crm_buildings", &["name", "partner"]);

/// Keeps the projection and, when a building's caretaker changes in CRM, the
/// partners' `buildings` lists: the building leaves the previous partner's list and
/// joins the new one's (a deleted building leaves every list). A snapshot the
/// projection rule refuses (older, or after the deletion) changes nothing, so
/// redelivered or reordered events are harmless.
async fn upsert_building(
    tx: &mut PgConnection,
    partners: &Collection,
    b: &Change<BuildingSnapshot>,
) -> anyhow::Result<()> {
    // The row lock orders concurrent handlers of one building, so the partner
    // read here is the one the upsert replaces.
    let old: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT partner FROM crm_buildings WHERE id = $1 FOR UPDATE")
            .bind(b.id)
            .fetch_optional(&mut *tx)
            .await?;
    let deleted = b.deleted;
    let new_partner = if deleted { None } else { b.partner };
    let applied = BUILDINGS
        .upsert(tx, b, |row, s| {
            row.bind(&s.name).bind(new_partner);
        })
        .await?;
    if !applied {
        return Ok(());
    }
    let existed = old.is_some();
    let old_partner = old.flatten();
    if existed && old_partner == new_partner && !deleted {
        return Ok(());
    }
    // Take the building off partners that should no longer list it.
    let mut changed: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE partners SET buildings = array_remove(buildings, $1), updated_at = now()
         WHERE $1 = ANY(buildings) AND ($2 OR id = $3) AND id IS DISTINCT FROM $4
         RETURNING id",
    )
    .bind(b.id)
    .bind(deleted)
    .bind(old_partner)
    .bind(new_partner)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(p) = new_partner {
        // An unknown partner (not yet created here) simply matches no row.
        changed.extend(
            sqlx::query_scalar::<_, Uuid>(
                "UPDATE partners SET buildings = array_append(buildings, $1), updated_at = now()
                 WHERE id = $2 AND NOT ($1 = ANY(buildings)) RETURNING id",
            )
            .bind(b.id)
            .bind(p)
            .fetch_all(&mut *tx)
            .await?,
        );
    }
    for partner in changed {
        publish_partner(tx, partners, partner).await?;
    }
    Ok(())
}

/// `partner.updated` with the partner as it now stands in `tx`.
async fn publish_partner(
    tx: &mut PgConnection,
    partners: &Collection,
    partner: Uuid,
) -> anyhow::Result<()> {
    let doc = partners
        .fetch(tx, partner, false)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .ok_or_else(|| anyhow::anyhow!("partner vanished"))?;
    isp_events::outbox::enqueue(tx, "core", &PartnerUpdated(serde_json::from_value(doc)?)).await?;
    Ok(())
}

/// NOC's IPAM subnets, for checking plans' static IP pools.
pub struct NocEvents;

const SUBNETS: Projection = Projection::new("noc_subnets", &["network"]);

impl EventHandler for NocEvents {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = entity_change::<IpSubnetSnapshot>(ev)? {
            SUBNETS
                .upsert(tx, &s, |row, s| {
                    row.bind(&s.network);
                })
                .await?;
        }
        Ok(())
    }
}
