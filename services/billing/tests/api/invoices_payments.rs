//! Invoices and payments: settling invoices, payment rules, invoice amounts and status transitions.

use uuid::Uuid;

use super::*;

#[tokio::test]
async fn partial_full_and_over_payments_settle_invoices_balance_and_next_due_date() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-01-31").await;
    let sub_path = format!("/api/billing/subscribers/{sub}");
    // The first invoice (1000) is paid in two parts.
    let r = pay(&app, &bm, &first, json!(400), "CASH-1", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["subscriber"], sub);
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(
        (inv["status"].clone(), inv["amountPaid"].clone()),
        (json!("Unpaid"), json!("400.00"))
    );
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-600.00");
    let r = pay(
        &app,
        &bm,
        &first,
        json!("600.00"),
        "BANK-1",
        "Bank Transfer",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(inv["status"], "Paid");
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "0.00");
    assert_eq!(app.outbox_count("billing", "payment.received").await, 2);
    // The run invoices the period from Jan 31; paying it moves nextDueDate to Feb 28.
    run(&app, &admin, "2026-01-31").await;
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-01-31'")).await;
    // Over-payment: 1500 on a 1000 invoice leaves 500 credit.
    let r = pay(&app, &bm, &period, json!(1500), "CASH-2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let doc = get(&app, &bm, &sub_path).await;
    assert_eq!(doc["nextDueDate"], "2026-02-28");
    assert_eq!(doc["accountBalance"], "500.00");
    let ev: Value = app.scalar("SELECT payload->'data' FROM billing.outbox WHERE type = 'payment.received' ORDER BY created_at DESC, id DESC LIMIT 1").await;
    assert_eq!(ev["accountBalance"], "500.00");
    // The credit settles half of the next invoice: 500 of 1000.
    run(&app, &admin, "2026-02-28").await;
    let (status, paid): (String, String) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT status, amount_paid::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-02-28'"))
            .fetch_one(&pool).await.unwrap()
    };
    assert_eq!((status.as_str(), paid.as_str()), ("Unpaid", "500.00"));
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-500.00");
    // Paying a Paid invoice again is an over-payment: it settles the open one.
    let r = pay(&app, &bm, &first, json!(50), "CASH-3", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(get(&app, &bm, &sub_path).await["accountBalance"], "-450.00");
    let paid: String = app.scalar(&format!("SELECT amount_paid::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-02-28'")).await;
    assert_eq!(paid, "550.00");
    assert_eq!(
        invoice_state(&app, &first).await,
        ("Paid".into(), "1000.00".into())
    );
}

#[tokio::test]
async fn payment_rules_reject_duplicates_bad_input_and_unpayable_invoices() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        pay(&app, &bm, &inv, json!(100), "R1", "Cash").await.status,
        StatusCode::CREATED
    );
    // The same receipt is never counted twice (per method).
    let r = pay(&app, &bm, &inv, json!(100), "R1", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("paymentReference"))
    );
    assert_eq!(
        pay(&app, &bm, &inv, json!(100), "R1", "Bank Transfer")
            .await
            .status,
        StatusCode::CREATED
    );
    // M-Pesa receipts come from the M-Pesa service, not the Billing Manager.
    let r = pay(&app, &bm, &inv, json!(100), "NLJ7RT61SV", "Mpesa").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("paymentMethod"))
    );
    let mpesa = app.service_token("mpesa", &["billing.payments.create"]);
    assert_eq!(
        pay(&app, &mpesa, &inv, json!(100), "NLJ7RT61SV", "Mpesa")
            .await
            .status,
        StatusCode::CREATED
    );
    let bad: Vec<(Value, &str)> = vec![
        (json!({"amountPaid": 0}), "amountPaid"),
        (json!({"amountPaid": -1}), "amountPaid"),
        (json!({"amountPaid": "1.001"}), "amountPaid"),
        (json!({"amountPaid": "abc"}), "amountPaid"),
        (json!({"paymentMethod": "Cheque"}), "paymentMethod"),
        (json!({"paymentDate": "2099-01-01"}), "paymentDate"),
        (json!({"paymentDate": "yesterday"}), "paymentDate"),
        (json!({"invoice": Uuid::new_v4()}), "invoice"),
        (json!({"invoice": "x"}), "invoice"),
        (json!({"paymentReference": ""}), "paymentReference"),
        (json!({"subscriber": Uuid::new_v4()}), "subscriber"),
    ];
    for (patch, path) in bad {
        let mut body = json!({"paymentReference": format!("X-{}", Uuid::new_v4().simple()), "invoice": inv,
            "amountPaid": 10, "paymentMethod": "Cash", "paymentDate": "2026-11-20"});
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = app.post("/api/billing/payments", &bm, body).await;
        assert!(
            matches!(r.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN),
            "{patch}: {:?}",
            r.body
        );
        assert_eq!(r.error_path(), Some(path), "{patch}: {:?}", r.body);
    }
    let r = app.post("/api/billing/payments", &bm, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Payments are a ledger: no edits, no deletes.
    let pid: String = app
        .scalar("SELECT id::text FROM billing.payments LIMIT 1")
        .await;
    assert_eq!(
        app.patch(
            &format!("/api/billing/payments/{pid}"),
            &bm,
            json!({"amountPaid": 1})
        )
        .await
        .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        app.delete(&format!("/api/billing/payments/{pid}"), &admin)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // A cancelled or draft invoice cannot be paid.
    let sub: String = app
        .scalar("SELECT id::text FROM billing.subscribers LIMIT 1")
        .await;
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "status": "Draft",
        "lineItems": [{"description": "Relocation", "quantity": 1, "price": 500}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = pay(&app, &bm, &draft, json!(10), "R9", "Cash").await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("invoice"))
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.payments")
            .await,
        3
    );
}

#[tokio::test]
async fn invoices_compute_amount_due_and_allow_only_sensible_transitions() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let sub = r.body["doc"]["id"].as_str().unwrap().to_string();
    let first = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let items = json!([{"description": "Relocation", "quantity": 2, "price": "250.50"}, {"description": "Cable", "quantity": 1, "price": 99}]);
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let inv = r.body["doc"].clone();
    assert_eq!(inv["amountDue"], "600.00");
    assert_eq!(inv["status"], "Unpaid");
    let path = format!("/api/billing/invoices/{}", inv["id"].as_str().unwrap());
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1600.00"
    );
    // amountDue is never accepted from the client.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items, "amountDue": 1}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("amountDue"))
    );
    let bad: Vec<(Value, &str)> = vec![
        (json!({"lineItems": []}), "lineItems"),
        (json!({"lineItems": "x"}), "lineItems"),
        (
            json!({"lineItems": [{"description": "x", "quantity": 1.5, "price": 1}]}),
            "lineItems.0.quantity",
        ),
        (json!({"subscriber": Uuid::new_v4()}), "subscriber"),
        (json!({"dueDate": "2026-13-01"}), "dueDate"),
        (json!({"status": "Paid"}), "status"),
        (json!({"status": "Bogus"}), "status"),
    ];
    for (patch, field) in bad {
        let mut body = json!({"subscriber": sub, "dueDate": "2026-12-01", "lineItems": items});
        body.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let r = app.post("/api/billing/invoices", &bm, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{patch}: {:?}", r.body);
        assert_eq!(r.error_path(), Some(field), "{patch}");
    }
    // Editing line items recomputes the amount and the balance.
    let r = app
        .patch(
            &path,
            &bm,
            json!({"lineItems": [{"description": "Relocation", "quantity": 1, "price": 100}]}),
        )
        .await;
    assert_eq!(r.body["doc"]["amountDue"], "100.00");
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1100.00"
    );
    for (status, code) in [
        ("Paid", StatusCode::CONFLICT),
        ("Overdue", StatusCode::CONFLICT),
        ("Draft", StatusCode::CONFLICT),
    ] {
        let r = app.patch(&path, &bm, json!({"status": status})).await;
        assert_eq!(
            (r.status, r.error_path()),
            (code, Some("status")),
            "{status}"
        );
    }
    assert_eq!(app.delete(&path, &bm).await.status, StatusCode::CONFLICT);
    // Cancelling gives the charge back; a cancelled invoice is final.
    let r = app.patch(&path, &bm, json!({"status": "Cancelled"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "-1000.00"
    );
    assert_eq!(
        app.patch(&path, &bm, json!({"status": "Unpaid"}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    // A paid invoice cannot be edited.
    pay(&app, &bm, &first, json!(1000), "P1", "Cash").await;
    let r = app
        .patch(
            &format!("/api/billing/invoices/{first}"),
            &bm,
            json!({"dueDate": "2027-01-01"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .patch(
            &format!("/api/billing/invoices/{first}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // A draft is free to delete; invoice numbers keep counting.
    let r = app.post("/api/billing/invoices", &bm, json!({"subscriber": sub, "dueDate": "2026-12-01", "status": "Draft", "lineItems": items})).await;
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await["accountBalance"],
        "0.00"
    );
    assert_eq!(
        app.delete(&format!("/api/billing/invoices/{draft}"), &bm)
            .await
            .status,
        StatusCode::OK
    );
}
