//! Billing's projections follow the shared rule (`isp_events::projection`).

use isp_testkit::fixtures::plan_snapshot;
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};

#[tokio::test]
async fn plans_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_billing)]).await;
    ProjectionCase {
        app: &app,
        source: "core",
        service: "billing",
        durable: "billing-core",
        probe: "SELECT name, deleted FROM plans WHERE id = $1",
    }
    .check_tombstone(plan_snapshot)
    .await;
}
