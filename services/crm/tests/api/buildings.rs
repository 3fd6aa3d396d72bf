//! Buildings and units: field checks, the partner, unique unit numbers, NOC equipment.

use isp_events::payloads::{ResourceCreated, ResourceDeleted, ResourceSnapshot, ResourceUpdated};

use super::*;

#[tokio::test]
async fn buildings_validate_every_field_check_the_partner_and_publish_events() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let p = partner(&app, &sales, "0711000002", "Prospect").await;
    let b = building(&app, &sales, Some(&p)).await;
    let got = app.get(&format!("/api/crm/buildings/{b}"), &sales).await;
    assert_eq!(got.body["location"], json!([39.6682, -4.0435]));
    assert_eq!(got.body["equipment"], json!([]));
    assert_eq!(got.body["partner"], json!(p));
    let ev = app.last_event("isp.crm.building.created", &b).await;
    assert_eq!(ev["data"]["partner"], json!(p));
    assert_eq!(ev["data"]["status"], "Active");

    let good = json!({"name": "Nyali Heights", "address": "Links Rd", "status": "Prospecting"});
    for (field, value) in [
        ("name", Value::Null),
        ("name", json!(5)),
        ("address", json!("")),
        // The 500-character bound is on what is sent (the documents' maxLength),
        // spaces that trimming would drop included.
        (
            "address",
            json!(format!("Links Rd{}", "\u{a0}".repeat(493))),
        ),
        ("status", json!("Signed")),
        ("status", Value::Null),
        ("partner", json!(Uuid::new_v4())),
        ("partner", json!("not-an-id")),
        ("location", json!([200, 0])),
        ("location", json!([39.6, -91])),
        ("location", json!([39.6])),
        ("location", json!("39.6,-4.0")),
        ("location", json!(["39.6", "-4.0"])),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let r = app.post("/api/crm/buildings", &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(field), "{field}={value}");
    }
    let missing = app
        .post("/api/crm/buildings", &sales, json!({"status": "Active"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let mut paths = missing.error_paths();
    paths.sort();
    assert_eq!(paths, ["address", "name"]);
    // equipment is NOC's view: never writable.
    let mut body = good.clone();
    body["equipment"] = json!([Uuid::new_v4()]);
    let r = app.post("/api/crm/buildings", &sales, body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_path(), Some("equipment"));
    let r = app
        .patch(
            &format!("/api/crm/buildings/{b}"),
            &sales,
            json!({"equipment": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/crm/buildings", &sales).await.body["totalDocs"],
        1,
        "bad input must not leave records behind"
    );

    let r = app
        .patch(
            &format!("/api/crm/buildings/{b}"),
            &sales,
            json!({"status": "Negotiating", "partner": null, "location": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["partner"].is_null());
    let ev = app.last_event("isp.crm.building.updated", &b).await;
    assert_eq!(ev["data"]["status"], "Negotiating");
    // A building with units cannot be deleted; an empty one can.
    unit(&app, &sales, &b, "A1").await;
    let r = app.delete(&format!("/api/crm/buildings/{b}"), &sales).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let other = app.post("/api/crm/buildings", &sales, good).await;
    let other = other.id();
    let r = app
        .delete(&format!("/api/crm/buildings/{other}"), &sales)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.last_event("isp.crm.building.deleted", &other).await;
}

#[tokio::test]
async fn building_units_keep_unit_numbers_unique_within_a_building() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b1 = building(&app, &sales, None).await;
    let b2 = building(&app, &sales, None).await;
    let u = app
        .post(
            "/api/crm/buildingUnits",
            &sales,
            json!({"unitNumber": "Apt 3B", "building": b1, "status": "Occupied", "currentProvider": "Safaricom Home Fibre",
                   "competitorPaymentDate": "2026-12-05", "currentIssues": "Drops every evening"}),
        )
        .await;
    assert_eq!(u.status, StatusCode::CREATED, "{:?}", u.body);
    assert_eq!(u.body["doc"]["competitorPaymentDate"], "2026-12-05");
    assert_eq!(u.body["doc"]["currentProvider"], "Safaricom Home Fibre");
    for number in ["Apt 3B", "apt 3b", " APT 3B "] {
        let d = app
            .post(
                "/api/crm/buildingUnits",
                &sales,
                json!({"unitNumber": number, "building": b1, "status": "Vacant"}),
            )
            .await;
        assert_eq!(d.status, StatusCode::CONFLICT, "{number}: {:?}", d.body);
        assert_eq!(d.error_path(), Some("unitNumber"));
    }
    // The same number in another building is another door.
    unit(&app, &sales, &b2, "Apt 3B").await;
    // Renaming onto an existing number is refused too.
    let other = unit(&app, &sales, &b1, "Apt 4C").await;
    let r = app
        .patch(
            &format!("/api/crm/buildingUnits/{other}"),
            &sales,
            json!({"unitNumber": "APT 3B"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("unitNumber"));

    let good = json!({"unitNumber": "G1", "building": b1, "status": "Vacant"});
    for (field, value) in [
        ("unitNumber", Value::Null),
        ("unitNumber", json!(12)),
        ("building", Value::Null),
        ("building", json!(Uuid::new_v4())),
        ("building", json!("nope")),
        ("status", json!("Empty")),
        ("status", Value::Null),
        ("competitorPaymentDate", json!("2026-02-30")),
        ("competitorPaymentDate", json!(20261205)),
        ("currentIssues", json!(["a"])),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let r = app.post("/api/crm/buildingUnits", &sales, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{field}={value}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(field), "{field}={value}");
    }
    assert_eq!(
        app.get("/api/crm/buildingUnits", &sales).await.body["totalDocs"],
        3
    );
    let r = app
        .get(
            &format!("/api/crm/buildingUnits?where[building][equals]={b1}&sort=unitNumber"),
            &sales,
        )
        .await;
    assert_eq!(r.body["totalDocs"], 2);
    assert_eq!(r.body["docs"][0]["unitNumber"], "Apt 3B");
}

#[tokio::test]
async fn noc_resource_events_fill_building_equipment() {
    let app = app().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let b1 = building(&app, &sales, None).await;
    let b2 = building(&app, &sales, None).await;
    let equipment = |b: String| {
        let app = &app;
        let sales = &sales;
        async move {
            app.get(&format!("/api/crm/buildings/{b}"), sales)
                .await
                .body["equipment"]
                .clone()
        }
    };
    let t0 = chrono::Utc::now();
    let router = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "MikroTik hAP".into(),
        resource_type: isp_events::options::ResourceType::Router,
        status: isp_events::options::ResourceStatus::Deployed,
        location: Some(b1.parse().unwrap()),
        management_ip: None,
        updated_at: t0,
    };
    let antenna = ResourceSnapshot {
        id: Uuid::now_v7(),
        resource_name: "Antenna".into(),
        resource_type: isp_events::options::ResourceType::Antenna,
        location: Some(b1.parse().unwrap()),
        ..router.clone()
    };
    app.publish("noc", &ResourceCreated(router.clone())).await;
    app.publish("noc", &ResourceCreated(antenna.clone())).await;
    let both = json!([antenna.id, router.id]);
    let got = eventually(10, || async {
        (equipment(b1.clone()).await == both).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "equipment: {:?}",
        equipment(b1.clone()).await
    );
    // The router moves to another building.
    let moved = ResourceSnapshot {
        location: Some(b2.parse().unwrap()),
        updated_at: t0 + chrono::Duration::seconds(1),
        ..router.clone()
    };
    app.publish("noc", &ResourceUpdated(moved.clone())).await;
    let got = eventually(10, || async {
        (equipment(b2.clone()).await == json!([router.id])).then_some(())
    })
    .await;
    assert!(got.is_some());
    assert_eq!(equipment(b1.clone()).await, json!([antenna.id]));
    // A stale snapshot (older updatedAt) does not move it back.
    app.publish("noc", &ResourceUpdated(router.clone())).await;
    app.publish(
        "noc",
        &ResourceDeleted(ResourceSnapshot {
            updated_at: t0 + chrono::Duration::seconds(2),
            ..antenna.clone()
        }),
    )
    .await;
    let got = eventually(10, || async {
        (equipment(b1.clone()).await == json!([])).then_some(())
    })
    .await;
    assert!(got.is_some());
    assert_eq!(equipment(b2.clone()).await, json!([router.id]));
}
