//! The spokes' projections (wa-parser's partners and buildings, Support's plans,
//! buildings and resources) follow the shared
//! rule (`isp_events::projection`): the late same-timestamp update after a
//! deletion, and an older snapshot, change nothing.

use isp_testkit::fixtures::{
    building_snapshot, partner_snapshot, plan_snapshot, resource_snapshot,
};
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};

#[tokio::test]
async fn wa_parser_partners_and_buildings_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_wa_parser)]).await;
    ProjectionCase {
        app: &app,
        source: "core",
        service: "wa-parser",
        durable: "wa-parser-core",
        probe: "SELECT full_name, deleted FROM partners WHERE id = $1",
    }
    .check_tombstone(partner_snapshot)
    .await;
    ProjectionCase {
        app: &app,
        source: "crm",
        service: "wa-parser",
        durable: "wa-parser-crm",
        probe: "SELECT name, deleted FROM buildings WHERE id = $1",
    }
    .check_tombstone(building_snapshot)
    .await;
}

#[tokio::test]
async fn support_plans_buildings_and_resources_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_support)]).await;
    for (source, durable, probe, make) in [
        (
            "core",
            "support-core",
            "SELECT name, deleted FROM plans WHERE id = $1",
            Snap::Plan,
        ),
        (
            "crm",
            "support-crm",
            "SELECT name, deleted FROM buildings WHERE id = $1",
            Snap::Building,
        ),
        (
            "noc",
            "support-noc",
            "SELECT resource_name, deleted FROM resources WHERE id = $1",
            Snap::Resource,
        ),
    ] {
        let case = ProjectionCase {
            app: &app,
            source,
            service: "support",
            durable,
            probe,
        };
        match make {
            Snap::Plan => case.check_tombstone(plan_snapshot).await,
            Snap::Building => case.check_tombstone(building_snapshot).await,
            Snap::Resource => case.check_tombstone(resource_snapshot).await,
        }
    }
}

enum Snap {
    Plan,
    Building,
    Resource,
}
