//! Resources: normalised unique MACs, checked links, the hidden NAS secret, resource events.

use super::*;

#[tokio::test]
async fn resources_normalize_and_deduplicate_macs_validate_links_hide_the_nas_secret_and_publish_events(
) {
    let app = app().await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (support, _) = app.staff_token("Support Agent").await;
    let building = Uuid::now_v7();
    app.publish(
        "crm",
        &BuildingCreated(BuildingSnapshot {
            id: building,
            name: "Sunrise Apartments".into(),
            address: "Moi Avenue".into(),
            status: isp_events::options::BuildingStatus::Active,
            partner: None,
            updated_at: chrono::Utc::now(),
        }),
    )
    .await;
    app.wait_for(&format!(
        "SELECT count(*) FROM noc.buildings WHERE id = '{building}'"
    ))
    .await;

    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Roof router", "resourceType": "Router", "status": "Deployed", "serialNumber": "SN-1",
                   "macAddress": "aa-bb-cc-00-11-22", "location": building, "managementIp": " 10.0.0.1 ", "nasSecret": "s3cret!",
                   "assignedTo": {"relationTo": "buildings", "value": building}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let router = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["doc"]["macAddress"], "AA:BB:CC:00:11:22");
    assert_eq!(r.body["doc"]["managementIp"], "10.0.0.1");
    assert_eq!(r.body["doc"]["nasSecret"], "s3cret!");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM radius.nas WHERE nasname = '10.0.0.1'")
            .await,
        1
    );

    // Support Agents may look, but never see the shared secret.
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &support)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body.get("nasSecret").is_none());
    // Nor does a service reading resources, unless its token names the field.
    let reader = app.service_token("test", &["noc.resources.read"]);
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &reader)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body.get("nasSecret").is_none());
    assert_eq!(seen.body["managementIp"], "10.0.0.1");
    let named = app.service_token(
        "test",
        &["noc.resources.read", "noc.resources.nasSecret.read"],
    );
    let seen = app
        .get(&format!("/api/noc/resources/{router}"), &named)
        .await;
    assert_eq!(seen.body["nasSecret"], "s3cret!");
    assert_eq!(
        app.post(
            "/api/noc/resources",
            &support,
            json!({"resourceName": "x", "resourceType": "Cable", "status": "In Stock"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );

    for (body, status, path) in [
        (
            json!({"macAddress": "AABB.CC00.1122"}),
            StatusCode::CONFLICT,
            "macAddress",
        ),
        (
            json!({"serialNumber": "SN-1"}),
            StatusCode::CONFLICT,
            "serialNumber",
        ),
        (
            json!({"macAddress": "nope"}),
            StatusCode::BAD_REQUEST,
            "macAddress",
        ),
        (
            json!({"location": Uuid::now_v7()}),
            StatusCode::BAD_REQUEST,
            "location",
        ),
        (
            json!({"assignedTo": {"relationTo": "plans", "value": building}}),
            StatusCode::BAD_REQUEST,
            "assignedTo",
        ),
        (
            json!({"assignedTo": {"relationTo": "subscribers", "value": Uuid::now_v7()}}),
            StatusCode::BAD_REQUEST,
            "assignedTo",
        ),
        (
            json!({"managementIp": "10.0.0.1"}),
            StatusCode::BAD_REQUEST,
            "managementIp",
        ),
        (
            json!({"resourceType": "Modem"}),
            StatusCode::BAD_REQUEST,
            "resourceType",
        ),
    ] {
        let mut b =
            json!({"resourceName": "Antenna", "resourceType": "Antenna", "status": "In Stock"});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = app.post("/api/noc/resources", &ne, b.clone()).await;
        assert_eq!(
            (r.status, r.error_path()),
            (status, Some(path)),
            "{b}: {:?}",
            r.body
        );
    }

    // One NAS per management IP: a second Router with the same IP (however
    // written) is refused, on create and on update.
    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Spare router", "resourceType": "Router", "status": "In Stock",
                   "managementIp": "10.0.0.1", "nasSecret": "other"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("managementIp")),
        "{:?}",
        r.body
    );
    let r = app
        .post(
            "/api/noc/resources",
            &ne,
            json!({"resourceName": "Spare router", "resourceType": "Router", "status": "In Stock",
                   "managementIp": "10.0.0.2"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let spare = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/noc/resources/{spare}"),
            &ne,
            json!({"managementIp": " 10.0.0.1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("managementIp")),
        "{:?}",
        r.body
    );

    // resource.created / updated / deleted reach the bus for CRM.
    let r = app
        .patch(
            &format!("/api/noc/resources/{router}"),
            &ne,
            json!({"status": "Faulty"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .delete(&format!("/api/noc/resources/{spare}"), &ne)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let pool = app.admin_pool().await;
    let events = eventually(10, || {
        let pool = pool.clone();
        async move {
            let t: Vec<(String, Value)> = sqlx::query_as(
                "SELECT type, payload->'data' FROM noc.outbox WHERE type LIKE 'resource.%' AND published_at IS NOT NULL ORDER BY created_at",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (t.len() == 4).then_some(t)
        }
    })
    .await
    .expect("four resource events published");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "resource.created",
            "resource.created",
            "resource.updated",
            "resource.deleted"
        ]
    );
    assert_eq!(events[3].1["id"], spare.as_str());
}
