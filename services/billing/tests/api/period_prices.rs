//! Period prices follow the plan's billing cycle.

use super::*;

#[tokio::test]
async fn a_period_costs_the_plan_price_scaled_from_the_plan_cycle_to_the_subscriber_cycle() {
    let app = app().await;
    let admin = app.admin_token().await;
    let monthly = plan(
        &app,
        &admin,
        json!({"price": 2500, "billingCycle": "Monthly"}),
    )
    .await;
    let quarterly = plan(
        &app,
        &admin,
        json!({"price": 7000, "billingCycle": "Quarterly"}),
    )
    .await;
    // First invoices: a Monthly plan bought quarterly costs 3 x 2500; a Quarterly
    // plan bought monthly costs 7000 / 3, rounded half-up to cents.
    let mut body = subscriber_body(&monthly);
    body["billingCycle"] = json!("Quarterly");
    let r = create_sub(&app, &admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["invoice"]["amountDue"], "7500.00");
    assert_eq!(r.body["invoice"]["lineItems"][0]["price"], "7500.00");
    let r = create_sub(&app, &admin, subscriber_body(&quarterly)).await;
    assert_eq!(r.body["invoice"]["amountDue"], "2333.33");
    let mut body = subscriber_body(&quarterly);
    body["billingCycle"] = json!("Quarterly");
    assert_eq!(
        create_sub(&app, &admin, body).await.body["invoice"]["amountDue"],
        "7000.00"
    );

    // The daily run prices each period the same way.
    let (m_m, _) = active_sub(&app, &admin, &monthly, "2026-06-01").await;
    let (m_q, _) = active_sub(&app, &admin, &monthly, "2026-06-01").await;
    let (q_m, _) = active_sub(&app, &admin, &quarterly, "2026-06-01").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET billing_cycle = 'Quarterly' WHERE id = '{m_q}'"
    ))
    .await;
    run(&app, &admin, "2026-06-01").await;
    let (amount, end, ..) = period_invoice(&app, &m_m, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("2500.00", d("2026-07-01")));
    let (amount, end, ..) = period_invoice(&app, &m_q, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("7500.00", d("2026-09-01")));
    let (amount, end, ..) = period_invoice(&app, &q_m, "2026-06-01").await;
    assert_eq!((amount.as_str(), end), ("2333.33", d("2026-07-01")));

    // Changing the subscriber's cycle applies from the next period: the invoiced
    // one keeps its price and length.
    let (bm, _) = app.staff_token("Billing Manager").await;
    for (sub, cycle) in [(&m_m, "Quarterly"), (&q_m, "Quarterly"), (&m_q, "Monthly")] {
        let r = app
            .patch(
                &format!("/api/billing/subscribers/{sub}"),
                &bm,
                json!({ "billingCycle": cycle }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_eq!(period_invoice(&app, &m_m, "2026-06-01").await.0, "2500.00");
    assert_eq!(period_invoice(&app, &m_q, "2026-06-01").await.0, "7500.00");
    for (sub, amount) in [(&m_m, "2500"), (&q_m, "2333.33"), (&m_q, "7500")] {
        let inv: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-06-01'")).await;
        let r = pay(&app, &bm, &inv, json!(amount), &format!("C-{sub}"), "Cash").await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    run(&app, &admin, "2026-09-01").await;
    let (amount, end, ..) = period_invoice(&app, &m_m, "2026-07-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("7500.00", d("2026-10-01")),
        "Monthly plan, now billed quarterly"
    );
    let (amount, end, ..) = period_invoice(&app, &q_m, "2026-07-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("7000.00", d("2026-10-01")),
        "Quarterly plan, now billed quarterly"
    );
    let (amount, end, ..) = period_invoice(&app, &m_q, "2026-09-01").await;
    assert_eq!(
        (amount.as_str(), end),
        ("2500.00", d("2026-10-01")),
        "Monthly plan, billed monthly after the quarter already invoiced"
    );
}
