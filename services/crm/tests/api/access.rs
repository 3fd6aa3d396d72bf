//! Who works in CRM (Admin and Sales Agents only) and the OpenAPI document.

use super::*;

#[tokio::test]
async fn only_admin_and_sales_agents_work_in_crm() {
    let app = app().await;
    let admin = app.admin_token().await;
    let p = partner(&app, &admin, "0711000005", "Active").await;
    let b = building(&app, &admin, Some(&p)).await;
    let u = unit(&app, &admin, &b, "R0").await;
    let roles = [
        "Admin",
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
        "Support Agent",
    ];
    for (i, role) in roles.iter().enumerate() {
        let t = if *role == "Admin" {
            admin.clone()
        } else {
            app.staff_token(role).await.0
        };
        let allowed = matches!(*role, "Admin" | "Sales Agent");
        let expect = |ok: StatusCode| if allowed { ok } else { StatusCode::FORBIDDEN };
        for coll in ["buildings", "buildingUnits", "leads"] {
            assert_eq!(
                app.get(&format!("/api/crm/{coll}"), &t).await.status,
                expect(StatusCode::OK),
                "{role} list {coll}"
            );
        }
        assert_eq!(
            app.get(&format!("/api/crm/buildings/{b}"), &t).await.status,
            expect(StatusCode::OK),
            "{role} get building"
        );
        let nb = app
            .post(
                "/api/crm/buildings",
                &t,
                json!({"name": format!("B{i}"), "address": "x", "status": "Prospecting"}),
            )
            .await;
        assert_eq!(
            nb.status,
            expect(StatusCode::CREATED),
            "{role} create building"
        );
        let nu = app
            .post(
                "/api/crm/buildingUnits",
                &t,
                json!({"unitNumber": format!("U{i}"), "building": b, "status": "Vacant"}),
            )
            .await;
        assert_eq!(nu.status, expect(StatusCode::CREATED), "{role} create unit");
        let nl = app.post("/api/crm/leads", &t, referral(&u, &p)).await;
        assert_eq!(nl.status, expect(StatusCode::CREATED), "{role} create lead");
        assert_eq!(
            app.patch(
                &format!("/api/crm/buildings/{b}"),
                &t,
                json!({"address": format!("Moi Ave {i}")})
            )
            .await
            .status,
            expect(StatusCode::OK),
            "{role} update building"
        );
        assert_eq!(
            app.patch(
                &format!("/api/crm/buildingUnits/{u}"),
                &t,
                json!({"currentIssues": "slow"})
            )
            .await
            .status,
            expect(StatusCode::OK),
            "{role} update unit"
        );
        if allowed {
            let (nb, nu, nl) = (nb.id(), nu.id(), nl.id());
            assert_eq!(
                app.patch(
                    &format!("/api/crm/leads/{nl}"),
                    &t,
                    json!({"status": "Contacted"})
                )
                .await
                .status,
                StatusCode::OK
            );
            let c = app
                .post(&format!("/api/crm/leads/{nl}/convert"), &t, convert_body())
                .await;
            assert_eq!(
                c.status,
                StatusCode::CREATED,
                "{role} convert: {:?}",
                c.body
            );
            let other = lead(&app, &t, referral(&u, &p)).await;
            assert_eq!(
                app.delete(&format!("/api/crm/leads/{other}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete lead"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildingUnits/{nu}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete unit"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildings/{nb}"), &t)
                    .await
                    .status,
                StatusCode::OK,
                "{role} delete building"
            );
        } else {
            let some_lead = app.get("/api/crm/leads?limit=1", &admin).await.body["docs"][0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                app.patch(
                    &format!("/api/crm/leads/{some_lead}"),
                    &t,
                    json!({"notes": "x"})
                )
                .await
                .status,
                StatusCode::FORBIDDEN,
                "{role} update lead"
            );
            assert_eq!(
                app.post(
                    &format!("/api/crm/leads/{some_lead}/convert"),
                    &t,
                    convert_body()
                )
                .await
                .status,
                StatusCode::FORBIDDEN,
                "{role} convert"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/leads/{some_lead}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete lead"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildingUnits/{u}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete unit"
            );
            assert_eq!(
                app.delete(&format!("/api/crm/buildings/{b}"), &t)
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{role} delete building"
            );
        }
    }
    // No token at all.
    let r = app
        .request(reqwest::Method::GET, "/api/crm/leads", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn openapi_documents_the_collections_and_convert() {
    let app = app().await;
    let spec = app
        .request(reqwest::Method::GET, "/api/crm/openapi.json", None, None)
        .await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["paths"]["/api/crm/leads/{id}/convert"]["post"].is_object());
    assert!(spec.body["paths"]["/api/crm/buildingUnits"]["post"].is_object());
    assert!(spec.body["components"]["schemas"]["Lead"]["properties"]["referredBy"].is_object());
}
