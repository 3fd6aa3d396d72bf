//! Request bodies and event payloads the services' tests build again and again,
//! and the API calls that create the usual records.

use chrono::{DateTime, Utc};
use isp_events::payloads::{
    BuildingSnapshot, IpSubnetSnapshot, PartnerSnapshot, PlanSnapshot, ResourceSnapshot,
    StaffSnapshot, SubscriberSnapshot, SubscriberStatusChange,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{eventually, TestApp};

/// A valid Core plan (Monthly, 10/5 Mbps, KES 2500).
pub fn plan_body() -> Value {
    json!({"name": "Home Basic 10Mbps", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500,
           "billingCycle": "Monthly"})
}

/// A valid Core partner with `phone`, Active.
pub fn partner_body(phone: &str) -> Value {
    json!({"fullName": "Jane Caretaker", "phoneNumber": phone, "mpesaNumber": "0722000111",
           "status": "Active"})
}

/// A valid Billing subscriber on `plan`.
pub fn subscriber_body(plan: &str) -> Value {
    json!({"firstName": "Amina", "lastName": "Otieno", "mpesaNumber": "0712345678",
           "servicePlan": plan, "billingCycle": "Monthly"})
}

/// `base` with the fields of `extra` added or replaced.
pub fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// Billing's `subscriber.*` snapshot of a Pending Installation subscriber.
pub fn subscriber_snapshot(id: Uuid, account: &str, plan: Uuid) -> SubscriberSnapshot {
    SubscriberSnapshot {
        id,
        account_number: account.into(),
        first_name: "Amina".into(),
        last_name: "Otieno".into(),
        mpesa_number: "+254711000111".into(),
        contact_phone: Some("+254722000222".into()),
        email: Some("amina@example.com".into()),
        status: isp_events::options::SubscriberStatus::PendingInstallation,
        service_plan: plan,
        billing_cycle: isp_events::options::BillingCycle::Monthly,
        next_due_date: None,
        address_notes: Some("Use the back gate".into()),
        service_location: None,
        building: None,
        lead_id: None,
        updated_at: Utc::now(),
    }
}

// Snapshots as their producers publish them, named `name` at `at` (for
// projection tests: `isp_testkit::projection`).

/// Core's `plan.*`: a Monthly Dynamic plan, 10/5 Mbps, KES 2500.
pub fn plan_snapshot(id: Uuid, name: &str, at: DateTime<Utc>) -> PlanSnapshot {
    PlanSnapshot {
        id,
        name: name.into(),
        download_speed: 10,
        upload_speed: 5,
        price: 2500.into(),
        billing_cycle: isp_events::options::BillingCycle::Monthly,
        plan_enabled: true,
        active_for_new_signups: true,
        ip_assignment_type: "Dynamic".into(),
        static_ip_pool: None,
        updated_at: at,
    }
}

/// Core's `partner.*`: an Active partner.
pub fn partner_snapshot(id: Uuid, full_name: &str, at: DateTime<Utc>) -> PartnerSnapshot {
    PartnerSnapshot {
        id,
        full_name: full_name.into(),
        phone_number: "+254711000222".into(),
        mpesa_number: "+254711000222".into(),
        status: isp_events::options::PartnerStatus::Active,
        commission_rate: 500.into(),
        referral_count: 0,
        updated_at: at,
    }
}

/// Core's `staff.*`: an Active Technician at token version 0.
pub fn staff_snapshot(id: Uuid, full_name: &str, at: DateTime<Utc>) -> StaffSnapshot {
    StaffSnapshot {
        id,
        full_name: full_name.into(),
        email: format!("{}@test.local", id.simple()),
        role: "Technician".into(),
        status: isp_events::options::StaffStatus::Active,
        phone_number: None,
        token_version: 0,
        updated_at: at,
    }
}

/// CRM's `building.*`: an Active building without a caretaker.
pub fn building_snapshot(id: Uuid, name: &str, at: DateTime<Utc>) -> BuildingSnapshot {
    BuildingSnapshot {
        id,
        name: name.into(),
        address: "Moi Avenue, Mombasa".into(),
        status: isp_events::options::BuildingStatus::Active,
        partner: None,
        updated_at: at,
    }
}

/// NOC's `resource.*`: a Router in stock, nowhere.
pub fn resource_snapshot(id: Uuid, resource_name: &str, at: DateTime<Utc>) -> ResourceSnapshot {
    ResourceSnapshot {
        id,
        resource_name: resource_name.into(),
        resource_type: isp_events::options::ResourceType::Router,
        status: isp_events::options::ResourceStatus::InStock,
        location: None,
        management_ip: None,
        updated_at: at,
    }
}

/// NOC's `ipSubnet.*` with `network` as given.
pub fn subnet_snapshot(id: Uuid, network: &str, at: DateTime<Utc>) -> IpSubnetSnapshot {
    IpSubnetSnapshot {
        id,
        network: network.into(),
        description: "Static customers".into(),
        updated_at: at,
    }
}

/// The payload of Billing's status events (`subscriber.suspended`, ...), now.
pub fn status_change(id: Uuid, account: &str) -> SubscriberStatusChange {
    SubscriberStatusChange {
        subscriber_id: id,
        account_number: account.into(),
        reason: None,
        at: Utc::now(),
    }
}

impl TestApp {
    /// A plan created through Core (unique name; `extra` overrides fields);
    /// returns its id. Projections elsewhere may not have it yet.
    pub async fn create_plan(&self, admin: &str, extra: Value) -> String {
        let body = with(
            with(
                plan_body(),
                json!({"name": format!("Home {}", Uuid::new_v4().simple())}),
            ),
            extra,
        );
        self.post("/api/core/plans", admin, body)
            .await
            .expect(StatusCode::CREATED)
            .id()
    }

    /// A partner created through Core with `phone` and `status`; returns its id.
    pub async fn create_partner(&self, token: &str, phone: &str, status: &str) -> String {
        self.post(
            "/api/core/partners",
            token,
            with(partner_body(phone), json!({"status": status})),
        )
        .await
        .expect(StatusCode::CREATED)
        .id()
    }

    /// Waits (`secs` at most) until `service`'s own `table` (a projection, say)
    /// has the row `id`; whether it did.
    pub async fn service_has_row(&self, service: &str, table: &str, id: Uuid, secs: u64) -> bool {
        let pool = self.ctx(service).pool.clone();
        let q = format!("SELECT count(*) FROM {table} WHERE id = $1");
        eventually(secs, || {
            let (pool, q) = (pool.clone(), q.clone());
            async move {
                let n: i64 = sqlx::query_scalar(&q)
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (n == 1).then_some(())
            }
        })
        .await
        .is_some()
    }

    /// Billing's subscriber `sub` once its status is `want` (`secs` at most).
    pub async fn subscriber_with_status(
        &self,
        token: &str,
        sub: &str,
        want: &str,
        secs: u64,
    ) -> Option<Value> {
        eventually(secs, || async {
            let r = self
                .get(&format!("/api/billing/subscribers/{sub}"), token)
                .await;
            (r.body["status"] == want).then_some(r.body)
        })
        .await
    }

    /// The one CRM lead referred by `partner`, once there is one (`secs` at most).
    pub async fn lead_referred_by(&self, token: &str, partner: &str, secs: u64) -> Option<Value> {
        eventually(secs, || async {
            let r = self
                .get(
                    &format!("/api/crm/leads?where[referredBy][equals]={partner}"),
                    token,
                )
                .await;
            (r.body["totalDocs"] == 1).then(|| r.body["docs"][0].clone())
        })
        .await
    }

    /// Waits (`secs` at most) until `service`'s projection of partner `id` has
    /// `status`; whether it did (the caller asserts, saying what it waited for).
    pub async fn partner_has_status(
        &self,
        service: &str,
        id: &str,
        status: &str,
        secs: u64,
    ) -> bool {
        let pool = self.ctx(service).pool.clone();
        let id: Uuid = id
            .parse()
            .unwrap_or_else(|e| panic!("partner id {id}: {e}"));
        eventually(secs, || {
            let pool = pool.clone();
            async move {
                let s: Option<String> =
                    sqlx::query_scalar("SELECT status FROM partners WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .ok()?;
                (s.as_deref() == Some(status)).then_some(())
            }
        })
        .await
        .is_some()
    }
}
