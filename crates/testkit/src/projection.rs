//! The projection rule (`isp_events::projection`) checked end to end: events
//! published on JetStream as their producer would, applied by the projecting
//! service's real consumer, then the projected row read back.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use isp_events::projection::Lifecycle;
use isp_events::EventPayload;
use uuid::Uuid;

use crate::TestApp;

/// One projection: who produces the entity, who projects it, and how to read
/// the projected row.
pub struct ProjectionCase<'a> {
    pub app: &'a TestApp,
    /// The producing service (`core`, `crm`, ...).
    pub source: &'a str,
    /// The projecting service and its durable consumer (`billing`, `billing-core`).
    pub service: &'a str,
    pub durable: &'a str,
    /// Selects `(label text, deleted boolean)` of the row whose id is `$1`, in
    /// the projecting service's schema; the label is the text field the
    /// snapshots below differ in.
    pub probe: &'a str,
}

impl ProjectionCase<'_> {
    async fn publish_all(&self, events: Vec<(String, isp_events::CloudEvent)>) {
        let mut last = None;
        for (subject, ev) in events {
            self.app.publish_event(&subject, &ev).await;
            last = Some(ev.id);
        }
        if let Some(id) = last {
            // One durable consumer applies a subject filter's events in stream order.
            self.app.processed_by(self.service, self.durable, id).await;
        }
    }

    async fn held(&self, id: Uuid) -> Option<(String, bool)> {
        sqlx::query_as(self.probe)
            .bind(id)
            .fetch_optional(&self.app.ctx(self.service).pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.probe))
    }

    fn event<P: EventPayload>(&self, payload: P) -> (String, isp_events::CloudEvent) {
        (
            P::nats_subject(),
            isp_events::CloudEvent::new(self.source, &payload).expect("event"),
        )
    }

    /// An older snapshot never overwrites a newer one; a deletion sticks: a late
    /// `updated` with the deletion's own `updatedAt` (or a later one) does not
    /// bring the row back, and a deletion that arrives before the entity's
    /// creation keeps the late creation out. `make(label, updatedAt)` builds the
    /// entity's snapshot of that moment.
    pub async fn check_tombstone<S: Lifecycle>(
        &self,
        make: impl Fn(Uuid, &str, DateTime<Utc>) -> S,
    ) {
        let t0 = Utc::now().trunc_subsecs(3) - Duration::seconds(30);
        let (t1, t2) = (t0 + Duration::seconds(10), t0 + Duration::seconds(20));
        let id = Uuid::now_v7();
        let events = vec![
            self.event(make(id, "v1", t0).created()),
            self.event(make(id, "v2", t1).updated()),
            self.event(make(id, "stale", t0).updated()),
        ];
        self.expect(
            events,
            id,
            ("v2", false),
            "an older snapshot overwrote a newer one",
        )
        .await;
        let events = vec![
            self.event(make(id, "v2", t1).deleted()),
            self.event(make(id, "revived", t1).updated()),
            self.event(make(id, "revived later", t2).updated()),
        ];
        self.expect(
            events,
            id,
            ("v2", true),
            "a late update brought a deleted row back",
        )
        .await;
        let early = Uuid::now_v7();
        let events = vec![
            self.event(make(early, "gone", t1).deleted()),
            self.event(make(early, "late", t0).created()),
        ];
        let why = "a creation arriving after the deletion brought the row back";
        self.expect(events, early, ("gone", true), why).await;
    }

    /// Publishes `events`, waits until the last is processed and asserts what the
    /// projection then holds of `id`.
    async fn expect(
        &self,
        events: Vec<(String, isp_events::CloudEvent)>,
        id: Uuid,
        (label, deleted): (&str, bool),
        why: &str,
    ) {
        self.publish_all(events).await;
        assert_eq!(
            self.held(id).await,
            Some((label.to_string(), deleted)),
            "{}: {why}",
            self.probe
        );
    }

    /// For entities without a deletion event: an older snapshot never overwrites
    /// a newer one. `created` / `updated` build the events of that moment.
    pub async fn check_order<C: EventPayload, U: EventPayload>(
        &self,
        created: impl Fn(Uuid, &str, DateTime<Utc>) -> C,
        updated: impl Fn(Uuid, &str, DateTime<Utc>) -> U,
    ) {
        let t0 = Utc::now().trunc_subsecs(3) - Duration::seconds(30);
        let t1 = t0 + Duration::seconds(10);
        let id = Uuid::now_v7();
        let events = vec![
            self.event(created(id, "v1", t0)),
            self.event(updated(id, "v2", t1)),
            self.event(updated(id, "stale", t0)),
            self.event(created(id, "stale created", t0)),
        ];
        self.expect(
            events,
            id,
            ("v2", false),
            "an older snapshot overwrote a newer one",
        )
        .await;
    }
}
