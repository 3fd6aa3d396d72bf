//! Due dates, catch-up and trials.

use super::*;

async fn status_of(app: &TestApp, id: &str) -> String {
    app.scalar(&format!(
        "SELECT status FROM billing.subscribers WHERE id = '{id}'"
    ))
    .await
}

#[tokio::test]
async fn a_caught_up_period_is_due_on_the_run_date_so_the_same_run_does_not_suspend() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // Paid up, then the runs of 20 to 24 October were missed.
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-20").await;
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    let report = run(&app, &admin, "2026-10-25").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(1), Some(0), Some(0))
    );
    let (_, end, due, status) = period_invoice(&app, &sub, "2026-10-20").await;
    assert_eq!(
        (end, due, status.as_str()),
        (d("2026-11-20"), d("2026-10-25"), "Unpaid")
    );
    assert_eq!(status_of(&app, &sub).await, "Active");
    // Unpaid the day after its due date: Overdue, and the subscriber is suspended.
    let report = run(&app, &admin, "2026-10-26").await;
    assert_eq!(report["subscribersSuspended"], 1);
    assert_eq!(status_of(&app, &sub).await, "Suspended");
}

#[tokio::test]
async fn payment_terms_push_due_dates_of_invoices_billing_creates() {
    let app = app_with(|c| {
        let mut o = options();
        o.settings.payment_terms_days = 3;
        Box::pin(svc_billing::start_with(c, o))
    })
    .await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-10-20").await;
    // The first invoice: three days after its creation day.
    let inv = get(&app, &bm, &format!("/api/billing/invoices/{first}")).await;
    assert_eq!(inv["dueDate"], (today() + chrono::Days::new(3)).to_string());
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    // A caught-up period: three days after the run date; on time: after its start.
    run(&app, &admin, "2026-10-22").await;
    assert_eq!(
        period_invoice(&app, &sub, "2026-10-20").await.2,
        d("2026-10-25")
    );
    assert_eq!(run(&app, &admin, "2026-10-25").await["invoicesOverdue"], 0);
    assert_eq!(run(&app, &admin, "2026-10-26").await["invoicesOverdue"], 1);
    assert_eq!(status_of(&app, &sub).await, "Suspended");
}

#[tokio::test]
async fn trials_delay_the_first_due_date_protect_from_suspension_and_start_the_next_period_after_them(
) {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    // A trial ending in ten days: the first invoice is due the day after it.
    let trial_end = today() + chrono::Days::new(10);
    let mut body = subscriber_body(&plan);
    body["trialEndDate"] = json!(trial_end.to_string());
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.body["invoice"]["dueDate"],
        (trial_end + chrono::Days::new(1)).to_string()
    );
    // A trial that already ended changes nothing: due on the creation day.
    let mut body = subscriber_body(&plan);
    body["trialEndDate"] = json!("2026-01-31");
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.body["invoice"]["dueDate"], today().to_string());

    // An Active subscriber with an overdue invoice is not suspended while the
    // trial lasts, and is once it has ended.
    let (sub, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET trial_end_date = '2026-10-10' WHERE id = '{sub}'"
    ))
    .await;
    app.sql(&format!(
        "UPDATE billing.invoices SET due_date = '2026-10-01' WHERE subscriber_id = '{sub}'"
    ))
    .await;
    let report = run(&app, &admin, "2026-10-05").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(0), Some(1), Some(0))
    );
    assert_eq!(
        run(&app, &admin, "2026-10-10").await["subscribersSuspended"],
        0
    );
    assert_eq!(status_of(&app, &sub).await, "Active");
    // The recurring period starts the day after the trial, not at nextDueDate
    // (which fell inside it); the anchor day moves with it.
    let report = run(&app, &admin, "2026-10-11").await;
    assert_eq!(report["invoicesCreated"], 1);
    assert_eq!(report["subscribersSuspended"], 1);
    assert_eq!(
        app.scalar::<i64>(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start <= '2026-10-10'")).await,
        0
    );
    let (_, end, due, _) = period_invoice(&app, &sub, "2026-10-11").await;
    assert_eq!((end, due), (d("2026-11-11"), d("2026-10-11")));
    let doc = get(&app, &admin, &format!("/api/billing/subscribers/{sub}")).await;
    assert_eq!(
        (
            doc["nextDueDate"].as_str(),
            doc["billingAnchorDay"].as_i64()
        ),
        (Some("2026-10-11"), Some(11))
    );
}
