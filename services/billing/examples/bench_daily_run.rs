//! Benchmark: the daily run over N Active subscribers all due on the same day
//! (default 100,000), against a bare `INSERT ... SELECT` of the same number of
//! invoice rows measured in the same database, same process.
//!
//! ```sh
//! ISP_TEST_PG_ADMIN_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!   cargo run --release -p svc-billing --example bench_daily_run [-- <subscribers>]
//! ```
//!
//! It creates its own throw-away database (dropped at the end) through
//! `ISP_TEST_PG_ADMIN_URL`; it is an example, so `cargo test` never runs it.

use std::time::Instant;

use chrono::NaiveDate;
use isp_testkit::TestDb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let db = TestDb::create().await?;
    let pool = db.schema_pool("billing", 4).await?;
    isp_events::migrate(&pool, &svc_billing::MIGRATOR).await?;
    let day = NaiveDate::from_ymd_opt(2026, 11, 25).expect("date");

    let t = Instant::now();
    sqlx::query(
        "INSERT INTO plans (id, name, price, billing_cycle, plan_enabled, active_for_new_signups, updated_at)
         VALUES ('00000000-0000-7000-8000-000000000001', 'Home 10Mbps', 2500, 'Monthly', true, true, now())",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO subscribers (id, account_number, first_name, last_name, mpesa_number, status,
             service_plan, billing_cycle, next_due_date, billing_anchor_day)
         SELECT uuid_v7(), (100000 + g)::text, 'First' || g, 'Last' || g, '+2547' || lpad(g::text, 8, '0'),
                'Active', '00000000-0000-7000-8000-000000000001', 'Monthly', $2, extract(day FROM $2::date)
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(day)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "seeded {n} Active subscribers due {day} in {:.2?}",
        t.elapsed()
    );

    // The floor: the same number of invoice rows, same table shape and indexes,
    // one plain INSERT ... SELECT (no conflict handling, no events, no balance).
    sqlx::query("CREATE TABLE bare_invoices (LIKE invoices INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let t = Instant::now();
    let bare = sqlx::query(
        "INSERT INTO bare_invoices (id, invoice_number, subscriber_id, amount_due, due_date, status,
             line_items, period_start, period_end)
         SELECT uuid_v7(), 'B-' || s.account_number, s.id, 2500, s.next_due_date, 'Unpaid',
                '[{\"description\":\"x\",\"quantity\":1,\"price\":\"2500.00\"}]', s.next_due_date,
                s.next_due_date + 30
         FROM subscribers s",
    )
    .execute(&pool)
    .await?
    .rows_affected();
    let bare_time = t.elapsed();
    println!("bare INSERT ... SELECT of {bare} invoice rows: {bare_time:.2?}");

    let t = Instant::now();
    let r = svc_billing::daily::run(&pool, day, "Manual", Default::default()).await?;
    let run_time = t.elapsed();
    println!(
        "daily run {day}: {} invoices created (+ {} invoice.created events, balances), {} overdue, {} suspended in {run_time:.2?}",
        r.invoices_created, r.invoices_created, r.invoices_overdue, r.subscribers_suspended
    );
    anyhow::ensure!(r.invoices_created == n, "expected {n} invoices");

    let t = Instant::now();
    let again = svc_billing::daily::run(&pool, day, "Manual", Default::default()).await?;
    println!(
        "same day again: {} invoices created in {:.2?}",
        again.invoices_created,
        t.elapsed()
    );
    anyhow::ensure!(again.invoices_created == 0, "a repeated run invoiced again");

    let next = day.succ_opt().expect("date");
    let t = Instant::now();
    let r = svc_billing::daily::run(&pool, next, "Manual", Default::default()).await?;
    println!(
        "next day {next} (nobody paid): {} invoices overdue, {} subscribers suspended (+ events) in {:.2?}",
        r.invoices_overdue,
        r.subscribers_suspended,
        t.elapsed()
    );
    println!(
        "ratio daily run / bare insert: {:.1}x",
        run_time.as_secs_f64() / bare_time.as_secs_f64()
    );
    pool.close().await;
    drop(db);
    Ok(())
}
