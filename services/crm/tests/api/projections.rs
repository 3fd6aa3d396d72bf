//! CRM's projections follow the shared rule (`isp_events::projection`), and so
//! does the `staff_access` projection every service but core keeps.

use chrono::{Duration, SubsecRound, Utc};
use isp_events::payloads::StaffUpdated;
use isp_testkit::fixtures::{partner_snapshot, resource_snapshot, staff_snapshot};
use isp_testkit::projection::ProjectionCase;
use isp_testkit::{service, TestApp};
use uuid::Uuid;

#[tokio::test]
async fn partners_and_resources_ignore_older_snapshots_and_stay_deleted() {
    let app = TestApp::spawn(&[service!(svc_crm)]).await;
    ProjectionCase {
        app: &app,
        source: "core",
        service: "crm",
        durable: "crm-core",
        probe: "SELECT full_name, deleted FROM partners WHERE id = $1",
    }
    .check_tombstone(partner_snapshot)
    .await;
    ProjectionCase {
        app: &app,
        source: "noc",
        service: "crm",
        durable: "crm-noc",
        probe: "SELECT resource_name, deleted FROM resources WHERE id = $1",
    }
    .check_tombstone(resource_snapshot)
    .await;
}

#[tokio::test]
async fn staff_access_follows_the_newest_snapshot_and_its_token_version_never_falls() {
    let app = TestApp::spawn(&[service!(svc_crm)]).await;
    let id = Uuid::now_v7();
    let t0 = Utc::now().trunc_subsecs(3) - Duration::seconds(30);
    let snap = |version: i32, status: &str, secs: i64| {
        let mut s = staff_snapshot(id, "Tess Technician", t0 + Duration::seconds(secs));
        s.token_version = version;
        s.status = isp_events::options::StaffStatus::parse(status).unwrap();
        StaffUpdated(s)
    };
    let held = || async {
        sqlx::query_as::<_, (i32, bool)>(
            "SELECT token_version, active FROM staff_access WHERE staff_id = $1",
        )
        .bind(id)
        .fetch_one(&app.ctx("crm").pool)
        .await
        .unwrap()
    };
    // A logout (version 2) and then, late, the older snapshot before it.
    app.publish("core", &snap(2, "Active", 10)).await;
    let last = app.publish("core", &snap(1, "Inactive", 0)).await;
    app.processed_by("crm", "crm-staff-access", last).await;
    assert_eq!(
        held().await,
        (2, true),
        "an older snapshot changed staff_access"
    );
    // Core's deletion snapshot: Inactive, newer, without the token version.
    let last = app.publish("core", &snap(0, "Inactive", 20)).await;
    app.processed_by("crm", "crm-staff-access", last).await;
    assert_eq!(
        held().await,
        (2, false),
        "the deletion lowered the version or kept the member active"
    );
}

/// An event CRM cannot read (a producer newer than this consumer: a partner
/// status it does not know) is retried, never applied with a guess, and shown to
/// Admin in `failingEvents` with the consumer, the event and the error; Admin may
/// skip it with a reason, and then it is acknowledged without being applied.
#[tokio::test]
async fn an_event_the_consumer_cannot_read_is_listed_in_failing_events_and_admin_may_skip_it() {
    let app = TestApp::spawn(&super::services()[..2]).await;
    let id = Uuid::now_v7();
    let snap = partner_snapshot(id, "Pat Future", Utc::now().trunc_subsecs(3));
    let mut ev =
        isp_events::CloudEvent::new("core", &isp_events::payloads::PartnerUpdated(snap)).unwrap();
    ev.data["status"] = serde_json::json!("Dormant");
    app.publish_event("isp.core.partner.updated", &ev).await;
    let admin = app.admin_token().await;
    let row = isp_testkit::eventually(20, || async {
        let r = app
            .get(
                &format!("/api/crm/failingEvents?where[eventId][equals]={}", ev.id),
                &admin,
            )
            .await;
        (r.status == reqwest::StatusCode::OK && r.body["totalDocs"] == 1)
            .then(|| r.body["docs"][0].clone())
    })
    .await
    .expect("the failing event is listed");
    assert_eq!(row["consumer"], "crm-core");
    assert_eq!(row["type"], "partner.updated");
    assert_eq!(row["source"], "/isp/core");
    assert!(row["deliveries"].as_i64().unwrap() >= 1, "{row}");
    assert!(
        row["lastError"].as_str().unwrap().contains("Dormant"),
        "the error names the value: {row}"
    );
    // Nothing was applied.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM partners WHERE id = $1")
        .bind(id)
        .fetch_one(&app.ctx("crm").pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Admin only, and read-only.
    let (sales, _) = app.staff_token("Sales Agent").await;
    let r = app.get("/api/crm/failingEvents", &sales).await;
    assert_eq!(r.status, reqwest::StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = app
        .post("/api/crm/failingEvents", &admin, serde_json::json!({}))
        .await;
    assert!(
        matches!(
            r.status,
            reqwest::StatusCode::FORBIDDEN | reqwest::StatusCode::METHOD_NOT_ALLOWED
        ),
        "{:?}",
        r.status
    );

    // Still in NATS's hands, waiting for its next delivery.
    let js = isp_events::async_nats::jetstream::new(app.shared.nats.clone());
    let stream = js.get_stream(isp_events::STREAM_NAME).await.unwrap();
    let info = stream.consumer_info("crm-core").await.unwrap();
    assert!(
        info.num_ack_pending as u64 + info.num_pending >= 1,
        "{info:?}"
    );
    // Admin gives up on it: the reason is required, the row is kept as the record.
    let skip = format!(
        "/api/crm/failingEvents/{}/skip",
        row["id"].as_str().unwrap()
    );
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"reason": "   "}),
        serde_json::json!({"reason": "x".repeat(501)}),
        serde_json::json!({"reason": "old producer", "force": true}),
    ] {
        let r = app.post(&skip, &admin, bad.clone()).await;
        assert_eq!(
            r.status,
            reqwest::StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            r.body
        );
    }
    let r = app
        .post(&skip, &sales, serde_json::json!({"reason": "not mine"}))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = app
        .post(
            &format!("/api/crm/failingEvents/{}/skip", Uuid::now_v7()),
            &admin,
            serde_json::json!({"reason": "no such row"}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = app
        .post(
            &skip,
            &admin,
            serde_json::json!({"reason": "A status from a newer Core; the partner is re-sent."}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["skippedAt"].is_string(), "{:?}", r.body);
    assert_eq!(
        r.body["doc"]["skipReason"],
        "A status from a newer Core; the partner is re-sent."
    );
    assert!(r.body["doc"]["skippedBy"].as_str().unwrap().contains('@'));
    let r = app
        .post(&skip, &admin, serde_json::json!({"reason": "again"}))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::CONFLICT, "{:?}", r.body);
    // The consumer acknowledges it at its next delivery, without applying it,
    // and the skipped row stays.
    let acked = isp_testkit::eventually(30, || async {
        let info = stream.consumer_info("crm-core").await.unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    assert!(acked.is_some(), "the skipped event is acknowledged");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM partners WHERE id = $1")
        .bind(id)
        .fetch_one(&app.ctx("crm").pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let r = app
        .get(
            &format!("/api/crm/failingEvents/{}", row["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(
        r.status,
        reqwest::StatusCode::OK,
        "the skipped row is kept: {:?}",
        r.body
    );
}
