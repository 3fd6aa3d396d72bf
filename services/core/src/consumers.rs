//! Events Core consumes from CRM.

use std::sync::Arc;

use isp_events::payloads::{
    entity_change, BuildingCreated, BuildingDeleted, BuildingSnapshot, BuildingUpdated,
    LeadConverted, PartnerUpdated,
};
use isp_events::{BoxFuture, CloudEvent, EventHandler};
use isp_platform::collection::Collection;
use sqlx::PgConnection;

pub struct CrmEvents {
    pub partners: Arc<Collection>,
}

impl EventHandler for CrmEvents {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        ev: &'a CloudEvent,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some(c) = ev.payload::<LeadConverted>()? {
                return self.count_referral(tx, &c).await;
            }
            match entity_change::<
                BuildingSnapshot,
                BuildingCreated,
                BuildingUpdated,
                BuildingDeleted,
            >(ev)?
            {
                Some((b, deleted)) => upsert_building(tx, &b, deleted).await,
                None => Ok(()),
            }
        })
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
        let doc = self
            .partners
            .fetch(tx, partner, false)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .ok_or_else(|| anyhow::anyhow!("partner vanished"))?;
        isp_events::outbox::enqueue(tx, "core", &PartnerUpdated(serde_json::from_value(doc)?))
            .await?;
        Ok(())
    }
}

async fn upsert_building(
    tx: &mut PgConnection,
    b: &BuildingSnapshot,
    deleted: bool,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO crm_buildings (id, name, deleted, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, deleted = EXCLUDED.deleted, updated_at = EXCLUDED.updated_at
         WHERE crm_buildings.updated_at <= EXCLUDED.updated_at",
    )
    .bind(b.id)
    .bind(&b.name)
    .bind(deleted)
    .bind(b.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
