//! The NOC's projections follow the shared rule (`isp_events::projection`).

use isp_events::payloads::{StaffCreated, StaffUpdated, SubscriberCreated, SubscriberUpdated};
use isp_testkit::fixtures::{
    building_snapshot, plan_snapshot, staff_snapshot, subscriber_snapshot,
};
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};
use uuid::Uuid;

fn case<'a>(app: &'a TestApp, source: &'a str, probe: &'a str) -> ProjectionCase<'a> {
    let durable = match source {
        "core" => "noc-core",
        "crm" => "noc-crm",
        _ => "noc-billing",
    };
    ProjectionCase {
        app,
        source,
        service: "noc",
        durable,
        probe,
    }
}

#[tokio::test]
async fn plans_buildings_staff_and_subscribers_ignore_older_snapshots_and_deletions_stick() {
    let app = TestApp::spawn(&[service!(svc_noc)]).await;
    case(
        &app,
        "core",
        "SELECT name, deleted FROM plans WHERE id = $1",
    )
    .check_tombstone(plan_snapshot)
    .await;
    case(
        &app,
        "crm",
        "SELECT name, deleted FROM buildings WHERE id = $1",
    )
    .check_tombstone(building_snapshot)
    .await;
    case(
        &app,
        "core",
        "SELECT full_name, false FROM staff WHERE id = $1",
    )
    .check_order(
        |id, name, at| StaffCreated(staff_snapshot(id, name, at)),
        |id, name, at| StaffUpdated(staff_snapshot(id, name, at)),
    )
    .await;
    let subscriber = |id, name: &str, at| {
        let mut s = subscriber_snapshot(id, &format!("ACC-{}", id.simple()), Uuid::now_v7());
        s.first_name = name.into();
        s.updated_at = at;
        s
    };
    case(
        &app,
        "billing",
        "SELECT first_name, false FROM subscribers WHERE id = $1",
    )
    .check_order(
        |id, name, at| SubscriberCreated(subscriber(id, name, at)),
        |id, name, at| SubscriberUpdated(subscriber(id, name, at)),
    )
    .await;
}
