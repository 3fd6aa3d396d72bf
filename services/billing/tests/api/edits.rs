//! Edits that move dates or money wait for the run and respect invoiced time.

use uuid::Uuid;

use super::*;

/// Holds the daily run's lock (as a running run does) on its own connection.
async fn hold_run_lock(app: &TestApp) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let pool = app.admin_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('billing.daily_run', 0))")
        .execute(&mut *conn)
        .await
        .unwrap();
    conn
}

/// Whether another transaction holds a lock on the row.
async fn row_locked(app: &TestApp, table: &str, id: &str) -> bool {
    let pool = app.admin_pool().await;
    let mut tx = pool.begin().await.unwrap();
    let r = sqlx::query(&format!(
        "SELECT 1 FROM billing.{table} WHERE id = '{id}' FOR UPDATE NOWAIT"
    ))
    .execute(&mut *tx)
    .await;
    tx.rollback().await.unwrap();
    r.is_err()
}

#[tokio::test]
async fn date_edits_wait_for_a_running_daily_run_and_never_reach_back_into_invoiced_time() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    run(&app, &admin, "2026-10-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;

    // While a run holds its lock, edits of nextDueDate / trialEndDate (and invoice
    // edits) wait, without holding the row the run may need meanwhile.
    for (target, body) in [
        (path.clone(), json!({"trialEndDate": "2026-09-30"})),
        (path.clone(), json!({"nextDueDate": "2026-11-01"})),
        (
            format!("/api/billing/invoices/{period}"),
            json!({"dueDate": "2026-10-02"}),
        ),
    ] {
        let mut lock = hold_run_lock(&app).await;
        let req = app
            .http
            .patch(format!("{}{target}", app.base))
            .header("authorization", format!("JWT {bm}"))
            .json(&body);
        let edit = tokio::spawn(async move { req.send().await.unwrap().status() });
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert!(!edit.is_finished(), "{body} did not wait for the run");
        assert!(!row_locked(&app, "subscribers", &sub).await, "{body}");
        assert!(!row_locked(&app, "invoices", &period).await, "{body}");
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended('billing.daily_run', 0))")
            .execute(&mut *lock)
            .await
            .unwrap();
        assert_eq!(edit.await.unwrap(), StatusCode::OK, "{body}");
    }
    assert_eq!(get(&app, &bm, &path).await["nextDueDate"], "2026-11-01");

    // October is invoiced: nextDueDate cannot go back into it (it would be
    // invoiced twice), whoever asks.
    for day in ["2026-10-15", "2026-10-01", "2026-09-01"] {
        let r = app.patch(&path, &bm, json!({ "nextDueDate": day })).await;
        assert_eq!(
            (r.status, r.error_path()),
            (StatusCode::BAD_REQUEST, Some("nextDueDate")),
            "{day}: {:?}",
            r.body
        );
    }
    let r = app
        .patch(&path, &admin, json!({"nextDueDate": "2026-11-05"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["billingAnchorDay"], 5);

    // Cancelling October withdraws it: billing goes on after it, and a period may
    // start inside it again, but not on the day the cancelled one started.
    let r = app
        .patch(
            &format!("/api/billing/invoices/{period}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(get(&app, &bm, &path).await["nextDueDate"], "2026-11-05");
    let r = app
        .patch(&path, &bm, json!({"nextDueDate": "2026-10-01"}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("nextDueDate"))
    );
    let r = app
        .patch(&path, &bm, json!({"nextDueDate": "2026-10-20"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(run(&app, &admin, "2026-10-20").await["invoicesCreated"], 1);
}

#[tokio::test]
async fn an_invoice_covered_by_an_edit_or_by_credit_is_paid_and_a_withdrawn_one_returns_its_settlement_as_credit(
) {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    run(&app, &admin, "2026-10-01").await;
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;
    // 600 paid on October's 1,000; a discount brings it down to 600: Paid, and the
    // next period is November.
    pay(&app, &bm, &period, json!(600), "C1", "Cash").await;
    let r = app
        .patch(
            &format!("/api/billing/invoices/{period}"),
            &bm,
            json!({"lineItems": [{"description": "October, discounted", "quantity": 1, "price": 600}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Paid"), Some("600.00"))
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["nextDueDate"], "2026-11-01");
    assert_eq!(doc["accountBalance"], "-1000.00");
    // A manual charge is settled in part by another payment's surplus; withdrawn,
    // what settled it is credit again. An invoice a payment names stays.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10",
                   "lineItems": [{"description": "Relocation", "quantity": 1, "price": 300}]}),
        )
        .await;
    let manual = r.body["doc"]["id"].as_str().unwrap().to_string();
    pay(&app, &bm, &first, json!(1100), "C2", "Cash").await;
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Unpaid".into(), "100.00".into())
    );
    let r = app
        .patch(
            &format!("/api/billing/invoices/{manual}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Cancelled".into(), "0.00".into())
    );
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "100.00");
    // With credit, a new charge is settled from it at once.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10",
                   "lineItems": [{"description": "Cable", "quantity": 1, "price": 80}]}),
        )
        .await;
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Paid"), Some("80.00"))
    );
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "20.00");
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-11-10", "status": "Draft",
                   "lineItems": [{"description": "Cable", "quantity": 1, "price": 50}]}),
        )
        .await;
    let draft = r.body["doc"]["id"].as_str().unwrap().to_string();
    let r = app
        .patch(
            &format!("/api/billing/invoices/{draft}"),
            &bm,
            json!({"status": "Unpaid"}),
        )
        .await;
    assert_eq!(
        (
            r.body["doc"]["status"].as_str(),
            r.body["doc"]["amountPaid"].as_str()
        ),
        (Some("Unpaid"), Some("20.00"))
    );
    let r = pay(&app, &bm, &draft, json!(10), "C3", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .patch(
            &format!("/api/billing/invoices/{draft}"),
            &bm,
            json!({"status": "Cancelled"}),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::CONFLICT, Some("status"))
    );
}

#[tokio::test]
async fn bad_input_on_invoice_and_expense_edits_is_400_naming_the_field() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let r = create_sub(&app, &admin, subscriber_body(&plan)).await;
    let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
    let inv_path = format!("/api/billing/invoices/{inv}");
    let item = |extra: Value| {
        let mut i = json!({"description": "Cable", "quantity": 1, "price": 100});
        i.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "lineItems": [i] })
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"lineItems": []}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": "x"}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": null}),
            StatusCode::BAD_REQUEST,
            "lineItems",
        ),
        (
            json!({"lineItems": [5]}),
            StatusCode::BAD_REQUEST,
            "lineItems.0",
        ),
        (
            item(json!({"quantity": 0})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"quantity": "2"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"quantity": 10001})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.quantity",
        ),
        (
            item(json!({"price": -1})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": "9.999"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": "lots"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": 10000001})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"price": null})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.price",
        ),
        (
            item(json!({"description": " "})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.description",
        ),
        (
            item(json!({"colour": "red"})),
            StatusCode::BAD_REQUEST,
            "lineItems.0.colour",
        ),
        (
            json!({"dueDate": "soon"}),
            StatusCode::BAD_REQUEST,
            "dueDate",
        ),
        (json!({"dueDate": null}), StatusCode::BAD_REQUEST, "dueDate"),
        (
            json!({"status": "Bogus"}),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (json!({"nope": 1}), StatusCode::BAD_REQUEST, "nope"),
        (json!({"amountDue": 1}), StatusCode::FORBIDDEN, "amountDue"),
        (
            json!({"amountPaid": 1}),
            StatusCode::FORBIDDEN,
            "amountPaid",
        ),
        (
            json!({"subscriber": Uuid::new_v4()}),
            StatusCode::FORBIDDEN,
            "subscriber",
        ),
    ];
    for (body, status, path) in cases {
        let r = app.patch(&inv_path, &bm, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{body}: {:?}",
            r.body
        );
    }
    let doc = get(&app, &bm, &inv_path).await;
    assert_eq!(
        (doc["amountDue"].as_str(), doc["status"].as_str()),
        (Some("1000.00"), Some("Unpaid"))
    );

    let r = app
        .post(
            "/api/billing/expenses",
            &bm,
            json!({"expenseDate": "2026-11-01", "category": "Rent", "amount": 100}),
        )
        .await;
    let exp_path = format!(
        "/api/billing/expenses/{}",
        r.body["doc"]["id"].as_str().unwrap()
    );
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"amount": 0}), StatusCode::BAD_REQUEST, "amount"),
        (json!({"amount": -5}), StatusCode::BAD_REQUEST, "amount"),
        (json!({"amount": "abc"}), StatusCode::BAD_REQUEST, "amount"),
        (
            json!({"amount": "1.001"}),
            StatusCode::BAD_REQUEST,
            "amount",
        ),
        (
            json!({"amount": "1000000000000"}),
            StatusCode::BAD_REQUEST,
            "amount",
        ),
        (json!({"amount": null}), StatusCode::BAD_REQUEST, "amount"),
        (
            json!({"category": "Snacks"}),
            StatusCode::BAD_REQUEST,
            "category",
        ),
        (
            json!({"expenseDate": "2026-13-01"}),
            StatusCode::BAD_REQUEST,
            "expenseDate",
        ),
        (
            json!({"expenseDate": null}),
            StatusCode::BAD_REQUEST,
            "expenseDate",
        ),
        (
            json!({"vendor": "v".repeat(501)}),
            StatusCode::BAD_REQUEST,
            "vendor",
        ),
        (json!({"vendor": 7}), StatusCode::BAD_REQUEST, "vendor"),
        (
            json!({"description": "d".repeat(20_001)}),
            StatusCode::BAD_REQUEST,
            "description",
        ),
        (json!({"receipt": {}}), StatusCode::FORBIDDEN, "receipt"),
        (json!({"nope": 1}), StatusCode::BAD_REQUEST, "nope"),
    ];
    for (body, status, path) in cases {
        let r = app.patch(&exp_path, &bm, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.error_paths().iter().any(|p| p == path),
            "{body}: {:?}",
            r.body
        );
    }
    let doc = get(&app, &bm, &exp_path).await;
    assert_eq!(
        (doc["amount"].as_str(), doc["category"].as_str()),
        (Some("100.00"), Some("Rent"))
    );
}
