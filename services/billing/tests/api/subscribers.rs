//! Subscribers: creation and first invoice, input checks, field access, NOC provisioning.

use isp_testkit::eventually;
use uuid::Uuid;

use super::*;

#[tokio::test]
async fn creating_a_subscriber_creates_the_first_invoice_and_publishes_events() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": "2500.00"})).await;
    let (building, unit, lead) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut body = subscriber_body(&plan);
    body["serviceLocation"] = json!(unit);
    body["building"] = json!(building);
    body["lead"] = json!(lead);
    body["oneOffCharges"] = json!([{"description": "Installation Fee", "quantity": 1, "price": 3000},
                                   {"description": "Router Purchase", "quantity": 2, "price": "1999.50"}]);
    let crm = app.service_token("crm", &["billing.subscribers.create"]);
    let r = create_sub(&app, &crm, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = &r.body["doc"];
    assert_eq!(doc["status"], "Pending Installation");
    assert_eq!(doc["mpesaNumber"], "+254712345678");
    assert_eq!(doc["building"], building.to_string());
    assert_eq!(doc["serviceLocation"], unit.to_string());
    assert_eq!(doc["lead"], lead.to_string());
    let acct = doc["accountNumber"].as_str().unwrap();
    assert!(
        acct.len() <= 8 && acct.chars().all(|c| c.is_ascii_digit()),
        "{acct}"
    );
    let inv = &r.body["invoice"];
    assert_eq!(inv["amountDue"], "9499.00");
    assert_eq!(inv["status"], "Unpaid");
    assert!(inv["invoiceNumber"].as_str().unwrap().starts_with("INV-"));
    assert_eq!(inv["lineItems"].as_array().unwrap().len(), 3);
    assert_eq!(inv["subscriber"], doc["id"]);
    // CRM's token creates subscribers but is not shown their balance; Admin is.
    assert!(doc.get("accountBalance").is_none(), "{doc}");
    let id = doc["id"].as_str().unwrap();
    assert_eq!(
        get(&app, &admin, &format!("/api/billing/subscribers/{id}")).await["accountBalance"],
        "-9499.00"
    );
    // A second subscriber gets the next numbers.
    let r2 = create_sub(&app, &admin, subscriber_body(&plan)).await;
    assert_ne!(r2.body["doc"]["accountNumber"], doc["accountNumber"]);
    let n = |v: &Value| {
        v["invoiceNumber"].as_str().unwrap()[4..]
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(n(&r2.body["invoice"]), n(inv) + 1);
    assert_eq!(app.outbox_count("billing", "subscriber.created").await, 2);
    assert_eq!(app.outbox_count("billing", "invoice.created").await, 2);
    let snap: Value = app.scalar(&format!("SELECT payload->'data' FROM billing.outbox WHERE type = 'subscriber.created' AND payload->>'subject' = '{}'", doc["id"].as_str().unwrap())).await;
    assert_eq!(snap["leadId"], lead.to_string());
    assert_eq!(snap["building"], building.to_string());
    assert!(snap.get("accountBalance").is_none());
    // The lead can be converted once.
    let mut again = subscriber_body(&plan);
    again["lead"] = json!(lead);
    let r = create_sub(&app, &crm, again).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_path(), Some("lead"));
}

#[tokio::test]
async fn subscriber_creation_is_idempotent_and_limited_to_admin_billing_and_scoped_services() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let crm = app.service_token("crm", &["billing.subscribers.create"]);
    let post = |token: String, key: &'static str, body: Value| {
        let req = app
            .http
            .post(format!("{}/api/billing/subscribers", app.base))
            .header("authorization", format!("JWT {token}"))
            .header("idempotency-key", key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, b1) = post(crm.clone(), "lead-1", subscriber_body(&plan)).await;
    let (s2, b2) = post(crm.clone(), "lead-1", subscriber_body(&plan)).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(b1, b2);
    let mut other = subscriber_body(&plan);
    other["firstName"] = json!("Someone Else");
    let (s3, b3) = post(crm.clone(), "lead-1", other).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{b3:?}");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.subscribers")
            .await,
        1
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.invoices")
            .await,
        1
    );
    // Billing Manager may (walk-in); Sales Agent only through CRM; a service
    // without the scope may not.
    let (bm, _) = app.staff_token("Billing Manager").await;
    assert_eq!(
        create_sub(&app, &bm, subscriber_body(&plan)).await.status,
        StatusCode::CREATED
    );
    for role in [
        "Sales Agent",
        "Support Agent",
        "Network Engineer",
        "Technician",
    ] {
        let (t, _) = app.staff_token(role).await;
        assert_eq!(
            create_sub(&app, &t, subscriber_body(&plan)).await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let wrong = app.service_token("crm", &["billing.subscribers.read"]);
    assert_eq!(
        create_sub(&app, &wrong, subscriber_body(&plan))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_subscriber_input_is_rejected_naming_the_field_and_writes_nothing() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan_id = plan(&app, &admin, json!({})).await;
    let disabled = plan(&app, &admin, json!({"planEnabled": false})).await;
    let closed = plan(&app, &admin, json!({"activeForNewSignups": false})).await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"servicePlan": Uuid::new_v4()}),
            StatusCode::BAD_REQUEST,
            "servicePlan",
        ),
        (
            json!({"servicePlan": "nope"}),
            StatusCode::BAD_REQUEST,
            "servicePlan",
        ),
        (
            json!({"servicePlan": disabled}),
            StatusCode::CONFLICT,
            "servicePlan",
        ),
        (
            json!({"servicePlan": closed}),
            StatusCode::CONFLICT,
            "servicePlan",
        ),
        (
            json!({"mpesaNumber": "12"}),
            StatusCode::BAD_REQUEST,
            "mpesaNumber",
        ),
        (
            json!({"mpesaNumber": null}),
            StatusCode::BAD_REQUEST,
            "mpesaNumber",
        ),
        (
            json!({"firstName": "  "}),
            StatusCode::BAD_REQUEST,
            "firstName",
        ),
        (
            json!({"email": "not-an-email"}),
            StatusCode::BAD_REQUEST,
            "email",
        ),
        (
            json!({"billingCycle": "Weekly"}),
            StatusCode::BAD_REQUEST,
            "billingCycle",
        ),
        (
            json!({"trialEndDate": "2026-02-30"}),
            StatusCode::BAD_REQUEST,
            "trialEndDate",
        ),
        (
            json!({"building": "x"}),
            StatusCode::BAD_REQUEST,
            "building",
        ),
        (
            json!({"accountBalance": 5}),
            StatusCode::BAD_REQUEST,
            "accountBalance",
        ),
        (
            json!({"status": "Active"}),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            json!({"oneOffCharges": "fee"}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 0, "price": 1}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.quantity",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 1, "price": -5}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.price",
        ),
        (
            json!({"oneOffCharges": [{"description": "Fee", "quantity": 1, "price": "1.234"}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.price",
        ),
        (
            json!({"oneOffCharges": [{"quantity": 1, "price": 1}]}),
            StatusCode::BAD_REQUEST,
            "oneOffCharges.0.description",
        ),
    ];
    for (patch, status, path) in cases {
        let mut body = subscriber_body(&plan_id);
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = create_sub(&app, &admin, body).await;
        assert_eq!(r.status, status, "{patch}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{patch}: {:?}",
            r.body
        );
    }
    let r = create_sub(&app, &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for f in [
        "firstName",
        "lastName",
        "mpesaNumber",
        "servicePlan",
        "billingCycle",
    ] {
        assert!(r.error_paths().iter().any(|p| p == f), "{f}");
    }
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/billing/subscribers",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for t in ["subscribers", "invoices", "outbox"] {
        assert_eq!(
            app.scalar::<i64>(&format!("SELECT count(*) FROM billing.{t}"))
                .await,
            0,
            "{t}"
        );
    }
}

#[tokio::test]
async fn roles_see_and_edit_only_their_subscriber_fields_and_finance_stays_with_admin_and_billing()
{
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/billing/subscribers/{id}");
    let (bm, _) = app.staff_token("Billing Manager").await;
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["accountBalance"], "-2500.00");
    for role in ["Sales Agent", "Support Agent", "Network Engineer"] {
        let (t, _) = app.staff_token(role).await;
        let doc = get(&app, &t, &path).await;
        assert_eq!(doc["firstName"], "Amina", "{role}");
        for hidden in [
            "accountBalance",
            "nextDueDate",
            "gracePeriodEndDate",
            "trialEndDate",
        ] {
            assert!(doc.get(hidden).is_none(), "{role} sees {hidden}");
        }
        let list = get(&app, &t, "/api/billing/subscribers").await;
        assert!(list["docs"][0].get("accountBalance").is_none());
        // Filtering on a hidden field would reveal it.
        let r = app
            .get(
                "/api/billing/subscribers?where[accountBalance][less_than]=0",
                &t,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
        for coll in ["invoices", "payments", "expenses", "dailyRuns"] {
            let r = app.get(&format!("/api/billing/{coll}"), &t).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {coll}");
        }
        assert_eq!(
            app.get(&format!("/api/billing/invoices/{inv}"), &t)
                .await
                .status,
            StatusCode::FORBIDDEN
        );
        let r = app.patch(&path, &t, json!({"addressNotes": "x"})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} edits");
    }
    let (tech, _) = app.staff_token("Technician").await;
    assert_eq!(app.get(&path, &tech).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/billing/subscribers", &tech).await.status,
        StatusCode::FORBIDDEN
    );
    // Billing Manager edits financial fields only.
    let r = app
        .patch(
            &path,
            &bm,
            json!({"gracePeriodEndDate": "2026-12-31", "mpesaNumber": "0733000111"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["gracePeriodEndDate"], "2026-12-31");
    for (field, value) in [
        ("firstName", json!("X")),
        ("addressNotes", json!("x")),
        ("servicePlan", json!(plan)),
    ] {
        let r = app.patch(&path, &bm, json!({ field: value })).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{field}");
        assert_eq!(r.error_path(), Some(field));
    }
    // Technical and derived fields belong to no one here.
    for (field, value) in [
        ("assignedIp", json!("10.0.0.1")),
        ("connectionType", json!("PPPoE")),
        ("accountBalance", json!(0)),
        ("accountNumber", json!("1")),
    ] {
        let r = app.patch(&path, &admin, json!({ field: value })).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{field}");
    }
    // Bad input on PATCH names the field; a Pending subscriber is not made Active by hand.
    let r = app
        .patch(&path, &admin, json!({"gracePeriodEndDate": "soon"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("gracePeriodEndDate"))
    );
    let r = app.patch(&path, &admin, json!({"status": "Active"})).await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("status"))
    );
    let r = app
        .patch(&path, &admin, json!({"servicePlan": Uuid::new_v4()}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("servicePlan"))
    );
    assert_eq!(
        app.delete(&path, &admin).await.status,
        StatusCode::FORBIDDEN
    );
    // Deactivation is final and announced.
    let r = app
        .patch(&path, &admin, json!({"status": "Deactivated"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.outbox_count("billing", "subscriber.deactivated").await,
        1
    );
    let r = app.patch(&path, &admin, json!({"status": "Active"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_cycle_changed_before_installation_applies_after_the_first_paid_period() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // Sold Monthly: the first invoice is one month's fee.
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let id: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.body["invoice"]["amountDue"], "1000.00");
    // Before the technician comes, the customer switches to Quarterly.
    let path = format!("/api/billing/subscribers/{id}");
    let r = app
        .patch(&path, &admin, json!({"billingCycle": "Quarterly"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Activated 2026-01-31 (Nairobi): the paid first period is one month, not three.
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-31T07:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    app.publish(
        "noc",
        &isp_events::payloads::SubscriberProvisioned {
            subscriber_id: id,
            connection_type: isp_events::options::ConnectionType::Pppoe,
            assigned_ip: None,
            radius_username: "acct".into(),
            at,
        },
    )
    .await;
    let doc = eventually(15, || async {
        let doc = get(&app, &admin, &path).await;
        (doc["status"] == "Active").then_some(doc)
    })
    .await
    .expect("activated");
    assert_eq!(doc["nextDueDate"], "2026-02-28");
    assert_eq!(doc["billingCycle"], "Quarterly");
    // From there on, quarterly periods at three months' fee.
    run(&app, &admin, "2026-02-28").await;
    let (amount, period_end, _, _) = period_invoice(&app, &id.to_string(), "2026-02-28").await;
    assert_eq!(amount, "3000.00");
    assert_eq!(period_end, d("2026-05-31"));
}

#[tokio::test]
async fn noc_provisioning_activates_the_subscriber_and_mirrors_network_fields() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let mut body = subscriber_body(&plan);
    body["billingCycle"] = json!("Quarterly");
    let r = create_sub(&app, &admin, body).await;
    let id: Uuid = r.body["doc"]["id"].as_str().unwrap().parse().unwrap();
    // 2026-01-31 10:00 Nairobi.
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-31T07:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ev = isp_events::payloads::SubscriberProvisioned {
        subscriber_id: id,
        connection_type: isp_events::options::ConnectionType::Pppoe,
        assigned_ip: Some("100.64.0.7".into()),
        radius_username: "acct".into(),
        at,
    };
    app.publish("noc", &ev).await;
    app.publish("noc", &ev).await;
    let path = format!("/api/billing/subscribers/{id}");
    let doc = eventually(15, || async {
        let doc = get(&app, &admin, &path).await;
        (doc["status"] == "Active").then_some(doc)
    })
    .await
    .expect("activated");
    assert_eq!(doc["connectionType"], "PPPoE");
    assert_eq!(doc["assignedIp"], "100.64.0.7");
    // First period starts at activation; the quarterly cycle keeps the month end.
    assert_eq!(doc["nextDueDate"], "2026-04-30");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.outbox_count("billing", "subscriber.activated").await, 1);
    // Network changes later are mirrored too.
    app.publish(
        "noc",
        &isp_events::payloads::SubscriberNetworkUpdated {
            subscriber_id: id,
            connection_type: isp_events::options::ConnectionType::StaticIp,
            assigned_ip: Some("41.90.1.2".into()),
            router: None,
            at: Some(chrono::Utc::now()),
        },
    )
    .await;
    let ok = eventually(15, || async {
        (get(&app, &admin, &path).await["assignedIp"] == "41.90.1.2").then_some(())
    })
    .await;
    assert!(ok.is_some());
    // NOC releases the address; an older change (from an hour ago) arrives late
    // and must not bring the address back.
    let pool = app.admin_pool().await;
    let processed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM billing.processed_events WHERE consumer = 'billing-noc'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = processed().await;
    for (ip, ago) in [(None, 0), (Some("41.90.1.99"), 3600)] {
        app.publish(
            "noc",
            &isp_events::payloads::SubscriberNetworkUpdated {
                subscriber_id: id,
                connection_type: isp_events::options::ConnectionType::StaticIp,
                assigned_ip: ip.map(Into::into),
                router: None,
                at: Some(chrono::Utc::now() - chrono::Duration::seconds(ago)),
            },
        )
        .await;
    }
    let all_processed = eventually(15, || async {
        (processed().await == before + 2).then_some(())
    })
    .await;
    assert!(
        all_processed.is_some(),
        "NOC's events were not all processed"
    );
    assert!(
        get(&app, &admin, &path).await["assignedIp"].is_null(),
        "a stale network_updated brought back a released address"
    );
}

#[tokio::test]
async fn network_fields_are_hidden_from_sales_agents_and_billing_managers() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({})).await;
    let (sub, _) = active_sub(&app, &admin, &plan, "2027-01-01").await;
    app.sql(&format!("UPDATE billing.subscribers SET connection_type = 'PPPoE', assigned_ip = '100.64.0.9' WHERE id = '{sub}'")).await;
    let path = format!("/api/billing/subscribers/{sub}");
    for role in ["Sales Agent", "Billing Manager"] {
        let (t, _) = app.staff_token(role).await;
        let doc = get(&app, &t, &path).await;
        assert_eq!(doc["firstName"], "Amina", "{role}");
        for hidden in ["connectionType", "assignedIp"] {
            assert!(doc.get(hidden).is_none(), "{role} sees {hidden}");
        }
        let list = get(&app, &t, "/api/billing/subscribers").await;
        assert!(list["docs"][0].get("assignedIp").is_none(), "{role}");
        // Nor can they filter or sort on it.
        let r = app
            .get(
                "/api/billing/subscribers?where[assignedIp][equals]=100.64.0.9",
                &t,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
        let r = app
            .get("/api/billing/subscribers?sort=connectionType", &t)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{role}");
    }
    let (ne, _) = app.staff_token("Network Engineer").await;
    let (support, _) = app.staff_token("Support Agent").await;
    for t in [&admin, &ne, &support] {
        let doc = get(&app, t, &path).await;
        assert_eq!(
            (doc["connectionType"].as_str(), doc["assignedIp"].as_str()),
            (Some("PPPoE"), Some("100.64.0.9"))
        );
    }
}
