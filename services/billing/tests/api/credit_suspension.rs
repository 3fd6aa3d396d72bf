//! Credit, surplus and suspension reasons.

use super::*;

#[tokio::test]
async fn an_overpayment_settles_other_open_invoices_oldest_first_and_the_rest_is_credit() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-09-01").await;
    app.sql(&format!(
        "UPDATE billing.invoices SET due_date = '2026-08-01' WHERE id = '{first}'"
    ))
    .await;
    // The first invoice is overdue on 1 September; the September period is invoiced.
    let report = run(&app, &admin, "2026-09-01").await;
    assert_eq!(report["subscribersSuspended"], 1);
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-09-01'")).await;
    // A manual charge, due mid-September.
    let r = app
        .post(
            "/api/billing/invoices",
            &bm,
            json!({"subscriber": sub, "dueDate": "2026-09-15",
                   "lineItems": [{"description": "Relocation", "quantity": 1, "price": 300}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let manual = r.body["doc"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/billing/subscribers/{sub}");
    assert_eq!(get(&app, &bm, &path).await["accountBalance"], "-2300.00");
    // 2,100 paid against the September invoice: it takes 1,000, the surplus pays
    // the oldest open invoice (the first one, 1,000) and 100 of the manual one.
    let r = pay(&app, &bm, &period, json!(2100), "C1", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["invoice"], period.as_str());
    assert_eq!(r.body["doc"]["amountPaid"], "2100.00");
    assert_eq!(
        invoice_state(&app, &period).await,
        ("Paid".into(), "1000.00".into())
    );
    assert_eq!(
        invoice_state(&app, &first).await,
        ("Paid".into(), "1000.00".into())
    );
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Unpaid".into(), "100.00".into())
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM billing.outbox WHERE type = 'invoice.updated'")
            .await,
        2
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["accountBalance"], "-200.00");
    // Still owes, and the manual invoice is past due: still suspended.
    assert_eq!(doc["status"], "Suspended");
    // 500 more on the manual invoice: it takes 200, 300 is credit; reactivated.
    let r = pay(&app, &bm, &manual, json!(500), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        invoice_state(&app, &manual).await,
        ("Paid".into(), "300.00".into())
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (
            doc["accountBalance"].as_str(),
            doc["status"].as_str(),
            doc["suspensionReason"].as_str()
        ),
        (Some("300.00"), Some("Active"), None)
    );
    // The credit settles the next period's invoice in part.
    app.sql(&format!("UPDATE billing.subscribers SET next_due_date = '2026-10-01', billing_anchor_day = 1 WHERE id = '{sub}'")).await;
    run(&app, &admin, "2026-10-01").await;
    let next: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-10-01'")).await;
    assert_eq!(
        invoice_state(&app, &next).await,
        ("Unpaid".into(), "300.00".into())
    );
}

#[tokio::test]
async fn credit_prevents_suspension_and_a_non_negative_balance_reactivates() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    let path = format!("/api/billing/subscribers/{sub}");
    // An overdue invoice while the balance is in credit (older data, or credit
    // given by hand): no suspension, the subscriber owes nothing overall.
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = 500 WHERE id = '{sub}'"
    ))
    .await;
    app.sql(&format!("INSERT INTO billing.invoices (id, invoice_number, subscriber_id, amount_due, due_date, status, line_items)
         VALUES (gen_random_uuid(), 'INV-X1', '{sub}', 400, '2026-10-01', 'Unpaid', '[]')")).await;
    let report = run(&app, &admin, "2026-10-05").await;
    assert_eq!(
        (
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(get(&app, &bm, &path).await["status"], "Active");
    // Once the balance is negative the same overdue invoice suspends.
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = -400 WHERE id = '{sub}'"
    ))
    .await;
    assert_eq!(
        run(&app, &admin, "2026-10-06").await["subscribersSuspended"],
        1
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Suspended"), Some("Non-payment"))
    );
    // A payment that brings the balance to zero reactivates even though an
    // overdue invoice still owes (its charge was covered by credit set by hand,
    // which no invoice records).
    app.sql(&format!(
        "UPDATE billing.subscribers SET account_balance = -50 WHERE id = '{sub}'"
    ))
    .await;
    let r = pay(&app, &bm, &first, json!(50), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let overdue: i64 = app.scalar(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{sub}' AND status = 'Overdue'")).await;
    assert_eq!(
        overdue, 1,
        "50 went to the overdue invoice, which still owes 350"
    );
    let doc = get(&app, &bm, &path).await;
    assert_eq!(
        (doc["accountBalance"].as_str(), doc["status"].as_str()),
        (Some("0.00"), Some("Active"))
    );
}

#[tokio::test]
async fn payments_lift_only_suspensions_for_non_payment_never_manual_ones() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (manual, manual_inv) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    let (unpaid, unpaid_inv) = active_sub(&app, &admin, &plan, "2027-06-01").await;
    app.sql("UPDATE billing.invoices SET due_date = '2026-10-01'")
        .await;
    // Billing Manager suspends one by hand (say, abuse); the run suspends the other.
    let mpath = format!("/api/billing/subscribers/{manual}");
    let r = app.patch(&mpath, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["suspensionReason"], "Manual");
    assert_eq!(
        run(&app, &admin, "2026-10-02").await["subscribersSuspended"],
        1
    );
    let upath = format!("/api/billing/subscribers/{unpaid}");
    assert_eq!(
        get(&app, &bm, &upath).await["suspensionReason"],
        "Non-payment"
    );
    // Both pay everything: only the non-payment suspension is lifted.
    pay(&app, &bm, &manual_inv, json!(1000), "C1", "Cash").await;
    pay(&app, &bm, &unpaid_inv, json!(1000), "C2", "Cash").await;
    let doc = get(&app, &bm, &mpath).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Suspended"), Some("Manual"))
    );
    let doc = get(&app, &bm, &upath).await;
    assert_eq!(
        (doc["status"].as_str(), doc["suspensionReason"].as_str()),
        (Some("Active"), None)
    );
    // Staff lift the manual one; the reason is read-only and finance-only.
    let r = app
        .patch(&mpath, &bm, json!({"suspensionReason": null}))
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::FORBIDDEN, Some("suspensionReason"))
    );
    let r = app.patch(&mpath, &admin, json!({"status": "Active"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["doc"]["suspensionReason"].is_null());
    let (support, _) = app.staff_token("Support Agent").await;
    assert!(get(&app, &support, &mpath)
        .await
        .get("suspensionReason")
        .is_none());
    // Confirming a run's suspension by hand makes it manual.
    app.sql(&format!("UPDATE billing.subscribers SET status = 'Suspended', suspension_reason = 'Non-payment' WHERE id = '{unpaid}'")).await;
    let r = app.patch(&upath, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.body["doc"]["suspensionReason"], "Manual");
}

#[tokio::test]
async fn suspended_days_inside_an_invoiced_period_are_owed_and_the_period_keeps_its_end() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let start = today() - chrono::Days::new(10);
    let (sub, first) = active_sub(&app, &admin, &plan, &start.to_string()).await;
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    run(&app, &admin, &start.to_string()).await;
    let day_after = (start + chrono::Days::new(1)).to_string();
    assert_eq!(
        run(&app, &admin, &day_after).await["subscribersSuspended"],
        1
    );
    // Nine days suspended inside the period, then paid today.
    let (period, end): (String, NaiveDate) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT id::text, period_end FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '{start}'"))
            .fetch_one(&pool).await.unwrap()
    };
    assert!(end > today());
    assert_eq!(
        pay(&app, &bm, &period, json!(1000), "C2", "Cash")
            .await
            .status,
        StatusCode::CREATED
    );
    let doc = get(&app, &bm, &format!("/api/billing/subscribers/{sub}")).await;
    assert_eq!(doc["status"], "Active");
    // The period is owed in full and ends where it always did: no days added.
    assert_eq!(doc["nextDueDate"], end.to_string());
    assert_eq!(doc["accountBalance"], "0.00");
}
