//! Ending access when a session ends (docs/contract.md#roles, architecture.md "Ending sessions").
//!
//! A staff JWT is valid until it expires, but logout, a password change, a role
//! change and deactivation must end it at once, on every service. Core bumps the
//! member's token version on each of these and publishes it in `staff.updated`
//! (`tokenVersion`, `status`). Every other service keeps the tiny `staff_access`
//! table (created by the shared event-table migrations) up to date from those
//! events with a consumer that [`crate::ServiceContext::migrate_and_relay`] starts
//! for it, and the shared [`crate::auth::Principal`] extractor refuses a staff token
//! whose `ver` is older than the table's, or whose member is inactive.
//!
//! Core owns staff: its `staff_access` is a view of its own staff table, so core
//! decides on the current row (and a deleted member's tokens stop at once).
//! Elsewhere the answer is as fresh as the events: a revocation takes effect once
//! `staff.updated` has arrived (normally milliseconds; during a NATS outage, when
//! NATS is back).
//!
//! A member the projection has not heard of (a member created a moment ago, a
//! service whose projection is still catching up) is not let through on the
//! signature alone: the service asks core once, with a bounded wait
//! ([`CORE_CHECK_TIMEOUT`]), whether core accepts this very token
//! (`GET /api/core/staff/me`). Core accepting it is recorded as the oldest possible
//! snapshot (`updated_at = -infinity`, the token's version), so any real event
//! about the member overrides it; core refusing it is a 401; core not answering
//! in time is a 503 with `Retry-After` (fail closed: nothing was done, resend).
//!
//! Service tokens are not staff and are never checked here.

use isp_events::payloads::StaffSnapshot;
use isp_events::{entity_change, CloudEvent, EventHandler, Projection};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::ApiError;

/// The service that owns staff (and so the authoritative `staff_access`).
pub const STAFF_OWNER: &str = "core";

/// Answers "may this staff token still be used?" from a service's own schema.
#[derive(Clone)]
pub struct StaffAccess {
    pool: PgPool,
    /// True at the staff owner: a member without a row no longer exists.
    authoritative: bool,
    /// Where core answers (the platform's internal URL), for members the
    /// projection has not heard of. None: such tokens are refused.
    core: Option<(reqwest::Client, String)>,
}

/// How long a service waits for core when it checks a member it has not heard of.
pub const CORE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl std::fmt::Debug for StaffAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAccess")
            .field("authoritative", &self.authoritative)
            .finish()
    }
}

impl StaffAccess {
    /// A service's projection of core's staff events.
    pub fn projection(pool: PgPool) -> Self {
        Self {
            pool,
            authoritative: false,
            core: None,
        }
    }

    /// The staff owner's own view of its staff table.
    pub fn authoritative(pool: PgPool) -> Self {
        Self {
            pool,
            authoritative: true,
            core: None,
        }
    }

    /// Checks members the projection has not heard of with core at `internal_url`.
    pub fn with_core(mut self, internal_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CORE_CHECK_TIMEOUT)
            .build()
            .expect("a default reqwest client builds");
        self.core = Some((http, internal_url.trim_end_matches('/').to_string()));
        self
    }

    /// For the service named `service`: authoritative at [`STAFF_OWNER`].
    pub fn for_service(service: &str, pool: PgPool) -> Self {
        if service == STAFF_OWNER {
            Self::authoritative(pool)
        } else {
            Self::projection(pool)
        }
    }

    pub fn is_authoritative(&self) -> bool {
        self.authoritative
    }

    /// Ok if `token`, a token of `staff_id` carrying `token_version`, may still be used.
    pub async fn check(
        &self,
        staff_id: Uuid,
        token_version: i32,
        token: &str,
    ) -> Result<(), ApiError> {
        let row: Option<(i32, bool)> =
            sqlx::query_as("SELECT token_version, active FROM staff_access WHERE staff_id = $1")
                .bind(staff_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "checking staff access");
                    ApiError::Unavailable("Could not check your session; try again.".into())
                })?;
        match row {
            None if self.authoritative => {
                Err(ApiError::unauthorized("The account no longer exists."))
            }
            None => self.ask_core(staff_id, token_version, token).await,
            Some((_, false)) => Err(ApiError::unauthorized("This account is inactive.")),
            Some((current, true)) if token_version < current => Err(ApiError::unauthorized(
                "This session has ended. Please log in again.",
            )),
            Some(_) => Ok(()),
        }
    }
}

impl StaffAccess {
    /// A member this projection has not heard of: does core accept the token?
    async fn ask_core(
        &self,
        staff_id: Uuid,
        token_version: i32,
        token: &str,
    ) -> Result<(), ApiError> {
        let Some((http, base)) = &self.core else {
            return Err(ApiError::unauthorized(
                "This account is not known to this service yet.",
            ));
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, %staff_id, "could not check an unknown staff member with core");
            ApiError::Unavailable("Could not check your session; try again.".into())
        };
        let res = http
            .get(format!("{base}/api/core/staff/me"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        match res.status().as_u16() {
            200 => {}
            401 => {
                let body: serde_json::Value = res.json().await.unwrap_or_default();
                let msg = body["errors"][0]["message"]
                    .as_str()
                    .unwrap_or("This session has ended. Please log in again.");
                return Err(ApiError::unauthorized(msg.to_string()));
            }
            s => return Err(unavailable(&format!("core answered {s}"))),
        }
        // Core's word, as the oldest possible snapshot: the events about this
        // member, when they arrive, override it; the version only grows.
        sqlx::query(
            "INSERT INTO staff_access (staff_id, token_version, active, updated_at)
             VALUES ($1, $2, true, '-infinity')
             ON CONFLICT (staff_id) DO NOTHING",
        )
        .bind(staff_id)
        .bind(token_version)
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

/// Durable consumer name of a service's staff-access projection.
pub fn consumer_name(service: &str) -> String {
    format!("{service}-staff-access")
}

/// Subjects the projection listens to.
pub const FILTER: &str = "isp.core.staff.>";

/// `staff_access` as a [`Projection`]: `active` follows the newest snapshot by
/// `updatedAt`; the token version only grows, because a deleted member's last
/// `staff.updated` (Inactive) carries none. Core publishes no staff deletion
/// event (the Inactive snapshot stands for it), so there is no tombstone.
pub const PROJECTION: Projection = Projection::new("staff_access", &["token_version", "active"])
    .key("staff_id")
    .without_tombstone()
    .monotonic(&["token_version"]);

/// Keeps `staff_access` current from `staff.created` / `staff.updated`.
pub struct StaffAccessProjection;

impl EventHandler for StaffAccessProjection {
    async fn handle(&self, tx: &mut PgConnection, ev: &CloudEvent) -> anyhow::Result<()> {
        if let Some(s) = entity_change::<StaffSnapshot>(ev)? {
            PROJECTION
                .upsert(tx, &s, |row, s| {
                    row.bind(s.token_version)
                        .bind(s.status == isp_events::options::StaffStatus::Active);
                })
                .await?;
        }
        Ok(())
    }
}
