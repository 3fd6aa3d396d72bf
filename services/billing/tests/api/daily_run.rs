//! The daily run: due subscribers invoiced once, overdue, suspension, the scheduler, the log.

use isp_events::CloudEvent;
use isp_testkit::eventually;

use super::*;

#[tokio::test]
async fn daily_run_invoices_each_due_subscriber_once_per_period_even_when_repeated_or_concurrent() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (due, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    let (missed, _) = active_sub(&app, &admin, &plan, "2026-10-20").await; // a missed day
    let (later, _) = active_sub(&app, &admin, &plan, "2026-10-26").await;
    let (trial, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET trial_end_date = '2026-10-30' WHERE id = '{trial}'"
    ))
    .await;
    let (suspended, _) = active_sub(&app, &admin, &plan, "2026-10-25").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET status = 'Suspended' WHERE id = '{suspended}'"
    ))
    .await;
    let pending = create_sub(&app, &admin, subscriber_body(&plan)).await.body["doc"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.sql(&format!(
        "UPDATE billing.subscribers SET next_due_date = '2026-10-01' WHERE id = '{pending}'"
    ))
    .await;

    // Two runs at once (two replicas), then the same date again.
    let (a, b) = tokio::join!(
        run(&app, &admin, "2026-10-25"),
        run(&app, &admin, "2026-10-25")
    );
    let created = a["invoicesCreated"].as_i64().unwrap() + b["invoicesCreated"].as_i64().unwrap();
    assert_eq!(created, 2);
    assert_eq!(run(&app, &admin, "2026-10-25").await["invoicesCreated"], 0);
    let count = |id: String| {
        let app = &app;
        async move {
            app.scalar::<i64>(&format!("SELECT count(*) FROM billing.invoices WHERE subscriber_id = '{id}' AND period_start IS NOT NULL")).await
        }
    };
    assert_eq!(count(due.clone()).await, 1);
    assert_eq!(count(missed.clone()).await, 1);
    assert_eq!(count(later).await, 0);
    assert_eq!(count(trial.clone()).await, 0, "on an active trial");
    assert_eq!(count(suspended).await, 0);
    assert_eq!(count(pending).await, 0);
    let (ps, pe, due_date, amount): (NaiveDate, NaiveDate, NaiveDate, String) = {
        let pool = app.admin_pool().await;
        sqlx::query_as(&format!("SELECT period_start, period_end, due_date, amount_due::text FROM billing.invoices WHERE subscriber_id = '{missed}' AND period_start IS NOT NULL"))
            .fetch_one(&pool).await.unwrap()
    };
    // The missed period keeps its dates but is due on the run date (payment terms
    // 0), so the catch-up cannot make it Overdue in the run that creates it.
    assert_eq!(
        (ps, pe, due_date, amount.as_str()),
        (d("2026-10-20"), d("2026-11-20"), d("2026-10-25"), "1000.00")
    );
    assert_eq!(app.outbox_count("billing", "invoice.created").await, 6 + 2);
    // After the trial the subscriber is billed from the day after it: a period
    // never starts inside the trial.
    assert!(
        run(&app, &admin, "2026-11-01").await["invoicesCreated"]
            .as_i64()
            .unwrap()
            >= 1
    );
    assert_eq!(count(trial.clone()).await, 1);
    let (amount, end, due_date, _) = period_invoice(&app, &trial, "2026-10-31").await;
    assert_eq!(
        (amount.as_str(), end, due_date),
        ("1000.00", d("2026-11-30"), d("2026-11-01"))
    );
    // Invoice numbers stay unique and sequential.
    let dupes: i64 = app
        .scalar("SELECT count(*) - count(DISTINCT invoice_number) FROM billing.invoices")
        .await;
    assert_eq!(dupes, 0);
}

#[tokio::test]
async fn daily_run_marks_overdue_suspends_unless_grace_and_logs_each_run() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (plain, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    let (graced, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    let (grace_over, _) = active_sub(&app, &admin, &plan, "2026-12-20").await;
    app.sql(&format!(
        "UPDATE billing.subscribers SET grace_period_end_date = '2026-10-31' WHERE id = '{graced}'"
    ))
    .await;
    app.sql(&format!("UPDATE billing.subscribers SET grace_period_end_date = '2026-10-26' WHERE id = '{grace_over}'")).await;
    // Their first invoices fell due on 2026-10-25: Overdue from the day after.
    app.sql("UPDATE billing.invoices SET due_date = '2026-10-25'")
        .await;
    let report = run(&app, &admin, "2026-10-25").await;
    assert_eq!(
        (
            report["invoicesOverdue"].as_i64(),
            report["subscribersSuspended"].as_i64()
        ),
        (Some(0), Some(0))
    );
    let report = run(&app, &admin, "2026-10-26").await;
    assert_eq!(report["invoicesOverdue"], 3);
    assert_eq!(report["subscribersSuspended"], 2);
    assert_eq!(report["runDate"], "2026-10-26");
    assert!(report["durationMs"].as_i64().is_some());
    let status = |id: String| {
        let app = &app;
        async move {
            app.scalar::<String>(&format!(
                "SELECT status FROM billing.subscribers WHERE id = '{id}'"
            ))
            .await
        }
    };
    assert_eq!(status(plain.clone()).await, "Suspended");
    assert_eq!(
        status(grace_over).await,
        "Suspended",
        "grace ended on the run date"
    );
    assert_eq!(
        status(graced.clone()).await,
        "Active",
        "grace in the future"
    );
    assert_eq!(app.outbox_count("billing", "subscriber.suspended").await, 2);
    assert_eq!(app.outbox_count("billing", "invoice.overdue").await, 3);
    let ev: Value = app
        .scalar("SELECT payload FROM billing.outbox WHERE type = 'subscriber.suspended' LIMIT 1")
        .await;
    assert!(ev["data"]["reason"].as_str().unwrap().contains("INV-"));
    assert_eq!(ev["source"], "/isp/billing");
    // Once the grace period passes, the next run suspends.
    assert_eq!(
        run(&app, &admin, "2026-11-01").await["subscribersSuspended"],
        1
    );
    assert_eq!(status(graced).await, "Suspended");
    // The run log: Admin and Billing Manager read it; others may not; only Admin runs it.
    let (bm, _) = app.staff_token("Billing Manager").await;
    let log = get(&app, &bm, "/api/billing/dailyRuns?sort=-runDate").await;
    assert_eq!(log["totalDocs"], 3);
    assert_eq!(log["docs"][0]["runDate"], "2026-11-01");
    let r = app
        .post(
            "/api/billing/jobs/daily-run",
            &bm,
            json!({"date": "2026-12-01"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (support, _) = app.staff_token("Support Agent").await;
    assert_eq!(
        app.get("/api/billing/dailyRuns", &support).await.status,
        StatusCode::FORBIDDEN
    );
    for body in [
        json!({"date": "2026-02-30"}),
        json!({"date": 20261201}),
        json!({"when": "2026-12-01"}),
    ] {
        let r = app
            .post("/api/billing/jobs/daily-run", &admin, body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
    }
    // Not ahead of time: tomorrow (in the ISP's time zone) is refused, naming date.
    let tomorrow = (today() + chrono::Days::new(1)).to_string();
    let r = app
        .post(
            "/api/billing/jobs/daily-run",
            &admin,
            json!({ "date": tomorrow }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_path()),
        (StatusCode::BAD_REQUEST, Some("date")),
        "{:?}",
        r.body
    );
    assert_eq!(
        run(&app, &admin, &today().to_string()).await["runDate"],
        today().to_string()
    );
    // Runs start through /dailyRuns/run only: the log itself takes no writes.
    let r = app.post("/api/billing/dailyRuns", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // Events written by set-based SQL honour the same contract as the typed ones.
    use isp_events::payloads::*;
    let pool = app.admin_pool().await;
    let rows: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT subject, type, payload FROM billing.outbox")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (subject, ty, payload) in rows {
        let ev = CloudEvent::from_json(payload.to_string().as_bytes()).unwrap();
        assert_eq!(subject, format!("isp.billing.{ty}"));
        assert_eq!(ev.id.get_version_num(), 7, "{ty}");
        let ok = match ty.as_str() {
            "invoice.created" => ev.payload::<InvoiceCreated>().unwrap().is_some(),
            "invoice.overdue" => ev.payload::<InvoiceOverdue>().unwrap().is_some(),
            "subscriber.suspended" => ev.payload::<SubscriberSuspended>().unwrap().is_some(),
            "subscriber.updated" => ev.payload::<SubscriberUpdated>().unwrap().is_some(),
            "subscriber.created" => ev.payload::<SubscriberCreated>().unwrap().is_some(),
            other => panic!("unexpected event {other}"),
        };
        assert!(ok, "{ty}");
    }
}

#[tokio::test]
async fn paying_what_is_overdue_reactivates_a_suspended_subscriber_from_today() {
    let app = app().await;
    let admin = app.admin_token().await;
    let (bm, _) = app.staff_token("Billing Manager").await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (sub, first) = active_sub(&app, &admin, &plan, "2026-01-10").await;
    app.sql("UPDATE billing.invoices SET due_date = '2026-01-01'")
        .await;
    run(&app, &admin, "2026-01-10").await; // first invoice overdue, period from Jan 10 invoiced
    let path = format!("/api/billing/subscribers/{sub}");
    assert_eq!(get(&app, &bm, &path).await["status"], "Suspended");
    // Paying one of two debts is not enough.
    pay(&app, &bm, &first, json!(1000), "C1", "Cash").await;
    assert_eq!(get(&app, &bm, &path).await["status"], "Suspended");
    run(&app, &admin, "2026-01-11").await; // the Jan 10 invoice is now overdue too
    let period: String = app.scalar(&format!("SELECT id::text FROM billing.invoices WHERE subscriber_id = '{sub}' AND period_start = '2026-01-10'")).await;
    let r = pay(&app, &bm, &period, json!(1000), "C2", "Cash").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let doc = get(&app, &bm, &path).await;
    assert_eq!(doc["status"], "Active");
    // The suspended months are not billed: the next period starts today.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    assert_eq!(doc["nextDueDate"], today.to_string());
    assert_eq!(
        app.outbox_count("billing", "subscriber.reactivated").await,
        1
    );
    // Billing Manager may also suspend and reactivate by hand.
    let r = app.patch(&path, &bm, json!({"status": "Suspended"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.outbox_count("billing", "subscriber.suspended").await, 2);
}

#[tokio::test]
async fn billing_cycles_keep_the_anchor_day_across_month_ends() {
    let app = app().await;
    let cases = [
        ("2026-01-31", "Monthly", 31, "2026-02-28"),
        ("2026-02-28", "Monthly", 31, "2026-03-31"),
        ("2028-01-31", "Monthly", 31, "2028-02-29"),
        ("2026-11-30", "Quarterly", 30, "2027-02-28"),
        ("2026-12-15", "Monthly", 15, "2027-01-15"),
        ("2026-10-31", "Quarterly", 31, "2027-01-31"),
    ];
    for (from, cycle, anchor, want) in cases {
        let got: NaiveDate = app
            .scalar(&format!(
                "SELECT billing.add_cycle('{from}', '{cycle}', {anchor})"
            ))
            .await;
        assert_eq!(got, d(want), "{from} {cycle} {anchor}");
    }
}

#[tokio::test]
async fn openapi_documents_the_custom_operations() {
    let app = app().await;
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/billing/openapi.json",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for path in [
        "/api/billing/subscribers",
        "/api/billing/invoices",
        "/api/billing/payments",
        "/api/billing/expenses/{id}/receipt",
        "/api/billing/jobs/daily-run",
        "/api/billing/dailyRuns",
    ] {
        assert!(r.body["paths"].get(path).is_some(), "{path}");
    }
    assert!(r.body["paths"]["/api/billing/subscribers"]
        .get("post")
        .is_some());
}

#[tokio::test]
async fn scheduler_catches_up_at_start_when_todays_run_time_has_passed() {
    let app = app().await;
    let schedule = svc_billing::daily::Schedule {
        at: chrono::NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
        enabled: true,
    };
    svc_billing::daily::spawn_scheduler(app.ctx("billing"), schedule, Default::default());
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    let pool = app.admin_pool().await;
    let ran = eventually(10, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing.daily_runs WHERE trigger = 'Scheduler' AND run_date = $1",
        )
        .bind(today)
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(ran.is_some(), "no catch-up run for {today}");
    // A second scheduler (another replica) finds today's run logged and waits for tomorrow.
    svc_billing::daily::spawn_scheduler(app.ctx("billing"), schedule, Default::default());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.daily_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn the_run_log_counts_due_subscribers_skipped_because_their_plan_is_unknown() {
    let app = app().await;
    let admin = app.admin_token().await;
    let plan = plan(&app, &admin, json!({"price": 1000})).await;
    let (known, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    let (orphan, _) = active_sub(&app, &admin, &plan, "2026-10-01").await;
    // Its plan never reached Billing (say, Core's event is still on its way).
    app.sql(&format!(
        "UPDATE billing.subscribers SET service_plan = gen_random_uuid() WHERE id = '{orphan}'"
    ))
    .await;
    let report = run(&app, &admin, "2026-10-01").await;
    assert_eq!(
        (
            report["invoicesCreated"].as_i64(),
            report["skippedUnknownPlan"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let _ = period_invoice(&app, &known, "2026-10-01").await;
    let log = get(&app, &admin, "/api/billing/dailyRuns").await;
    assert_eq!(log["docs"][0]["skippedUnknownPlan"], 1);
    // Still counted on the next run, until the plan arrives.
    assert_eq!(
        run(&app, &admin, "2026-10-02").await["skippedUnknownPlan"],
        1
    );
}
