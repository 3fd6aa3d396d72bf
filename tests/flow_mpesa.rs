//! docs/contract.md flow 5 across the whole fleet over real HTTP, Postgres, NATS, FreeRADIUS
//! and the Daraja stand-in (callbacks come through the launcher's `/hooks/daraja`
//! route): two subscribers are suspended for an overdue invoice; one pays by STK
//! push, the other by paybill with the account number typed in lower case with
//! spaces. Each gets one Payment, the invoice Paid, nextDueDate kept at the end of the paid period,
//! `subscriber.reactivated`, and FreeRADIUS accepts them again.
//!
//! And money out: a partner's referral converted in CRM -> its first invoice
//! paid by STK push -> a commission -> approved by Admin -> B2C -> Paid -> an
//! expense in Billing; the B2C result replayed -> paid once.

use std::sync::OnceLock;
use std::time::Duration;

mod common;

use isp_testkit::freeradius::{FreeRadiusParams, TestFreeRadius};
use isp_testkit::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One stand-in for the process, on its own thread and runtime (a test's runtime
/// ends with the test), and M-Pesa's settings pointing at it: the launcher's
/// fleet reads them from the environment.
fn standin() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let s = daraja_standin::Standin::spawn(daraja_standin::Config::default())
                    .await
                    .unwrap();
                tx.send(s.base.clone()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        let base = rx.recv().unwrap();
        std::env::set_var("ISP_MPESA_DARAJA_URL", &base);
        std::env::set_var("ISP_MPESA_CERTIFICATE", daraja_standin::CERT_PEM);
        std::env::set_var("ISP_MPESA_STK_QUERY_AFTER_SECONDS", "5");
        std::env::set_var("ISP_MPESA_PULL_INTERVAL_SECONDS", "0");
        base
    })
}

struct Sub {
    id: String,
    invoice: String,
    account: String,
    amount: String,
    user: String,
    pass: String,
}

async fn installed(app: &TestApp, admin: &str, ne: &str, plan: &str, phone: &str) -> Sub {
    let walk_in = json!({"firstName": "Otieno", "lastName": "Odhiambo", "mpesaNumber": phone, "servicePlan": plan, "billingCycle": "Monthly"});
    let created = common::installed_subscriber(app, admin, ne, walk_in).await;
    let id = created["doc"]["id"].as_str().unwrap().to_string();
    let tech = app
        .get(&format!("/api/noc/subscribers/{id}"), ne)
        .await
        .body;
    Sub {
        invoice: created["invoice"]["id"].as_str().unwrap().to_string(),
        account: created["doc"]["accountNumber"]
            .as_str()
            .unwrap()
            .to_string(),
        amount: created["invoice"]["amountDue"]
            .as_str()
            .unwrap()
            .to_string(),
        user: tech["radiusUsername"].as_str().unwrap().to_string(),
        pass: tech["radiusPassword"].as_str().unwrap().to_string(),
        id,
    }
}

#[tokio::test]
async fn suspended_subscribers_paying_by_stk_push_and_by_paybill_are_reactivated_and_reconnected() {
    let daraja = standin().to_string();
    let app = TestApp::spawn(&isp::fleet()).await;
    let fr = TestFreeRadius::start(FreeRadiusParams::for_database(
        &app.db.host,
        app.db.port,
        &app.db.name,
    ))
    .await
    .expect("FreeRADIUS");
    let admin = app.admin_token().await;
    let (billing, _) = app.staff_token("Billing Manager").await;
    let (ne, _) = app.staff_token("Network Engineer").await;
    let r = app
        .post("/api/core/plans", &admin, json!({"name": "Home 10", "downloadSpeed": 10, "uploadSpeed": 5, "price": 2500, "billingCycle": "Monthly"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let plan = r.body["doc"]["id"].as_str().unwrap().to_string();
    let stk = installed(&app, &admin, &ne, &plan, "0722333444").await;
    let c2b = installed(&app, &admin, &ne, &plan, "0722333555").await;
    for s in [&stk, &c2b] {
        assert!(
            fr.auth(&s.user, &s.pass).await.unwrap().accepted,
            "{}",
            fr.log()
        );
    }

    // Both first invoices fell due yesterday: today's run suspends both.
    let pool = app.admin_pool().await;
    let due: String = sqlx::query_scalar(
        "UPDATE billing.invoices SET due_date = due_date - 1 WHERE id IN ($1::uuid, $2::uuid)
         RETURNING (due_date + 1)::text",
    )
    .bind(&stk.invoice)
    .bind(&c2b.invoice)
    .fetch_one(&pool)
    .await
    .unwrap();
    let r = app
        .post("/api/billing/jobs/daily-run", &admin, json!({"date": due}))
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    for s in [&stk, &c2b] {
        assert!(app
            .subscriber_with_status(&admin, &s.id, "Suspended", 20)
            .await
            .is_some());
        let rejected = eventually(15, || async {
            (!fr.auth(&s.user, &s.pass).await.unwrap().accepted).then_some(())
        })
        .await;
        assert!(
            rejected.is_some(),
            "FreeRADIUS rejects the suspended subscriber"
        );
    }
    let before: Vec<Value> = futures_join(&app, &admin, &[&stk.id, &c2b.id]).await;

    // STK push for the overdue invoice, once M-Pesa's projection has it Overdue.
    let r = eventually(15, || async {
        let r = app
            .post(
                "/api/mpesa/stk-push",
                &billing,
                json!({"invoice": stk.invoice}),
            )
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("STK push accepted");
    assert_eq!(r.body["doc"]["amount"], stk.amount.as_str());

    // Paybill: the account number typed in lower case with spaces.
    let typed = format!(
        " {} {} ",
        &c2b.account[..3].to_lowercase(),
        &c2b.account[3..]
    );
    let http = reqwest::Client::new();
    let token: String = eventually(15, || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT access_token FROM mpesa.daraja_tokens")
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
    })
    .await
    .expect("M-Pesa holds a Daraja token");
    let registered = eventually(15, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
    assert!(registered.is_some(), "C2B URLs registered at start");
    let r = http
        .post(format!("{daraja}/mpesa/c2b/v2/simulate"))
        .bearer_auth(&token)
        .json(&json!({"ShortCode": "174379", "CommandID": "CustomerPayBillOnline",
            "Amount": c2b.amount.trim_end_matches(".00"), "Msisdn": "254722333555", "BillRefNumber": typed}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    for (s, b) in [(&stk, &before[0]), (&c2b, &before[1])] {
        let after = app
            .subscriber_with_status(&admin, &s.id, "Active", 20)
            .await
            .expect("Billing reactivates the paid-up subscriber");
        // The period the overdue invoice billed is now paid: nextDueDate stays at
        // (or, after a long suspension, restarts from) the end of what is paid.
        let (a, b) = (
            after["nextDueDate"].as_str().unwrap(),
            b["nextDueDate"].as_str().unwrap(),
        );
        assert!(a >= b, "nextDueDate {a} before {b}");
        let inv = app
            .get(&format!("/api/billing/invoices/{}", s.invoice), &billing)
            .await;
        assert_eq!(inv.body["status"], "Paid");
        let payments = app
            .get(
                &format!("/api/billing/payments?where[invoice][equals]={}", s.invoice),
                &billing,
            )
            .await;
        assert_eq!(payments.body["totalDocs"], 1, "{:?}", payments.body);
        assert_eq!(payments.body["docs"][0]["paymentMethod"], "Mpesa");
        let back = eventually(20, || async {
            fr.auth(&s.user, &s.pass)
                .await
                .unwrap()
                .accepted
                .then_some(())
        })
        .await;
        assert!(back.is_some(), "FreeRADIUS accepts again\n{}", fr.log());
    }
    let reactivated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM billing.outbox WHERE type = 'subscriber.reactivated'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reactivated, 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn futures_join(app: &TestApp, token: &str, ids: &[&str]) -> Vec<Value> {
    let mut out = vec![];
    for id in ids {
        out.push(
            app.get(&format!("/api/billing/subscribers/{id}"), token)
                .await
                .body,
        );
    }
    out
}

async fn scalar(pool: &sqlx::PgPool, q: &str) -> i64 {
    sqlx::query_scalar(q).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_converted_referral_whose_first_invoice_is_paid_earns_a_commission_paid_once_by_b2c_and_booked_in_billing(
) {
    let daraja = standin().to_string();
    let app = TestApp::spawn(&isp::fleet()).await;
    let pool = app.admin_pool().await;
    let admin = app.admin_token().await;
    let (sales, _) = app.staff_token("Sales Agent").await;
    let (billing, _) = app.staff_token("Billing Manager").await;
    let plan = app.create_plan(&admin, json!({"price": 3000})).await;
    let partner = app
        .create(
            "/api/core/partners",
            &sales,
            json!({"fullName": "Jane Caretaker", "phoneNumber": "0711222333", "mpesaNumber": "0722000111",
                   "status": "Active", "commissionRate": "2000"}),
        )
        .await;
    let crm_knows = eventually(15, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM crm.partners WHERE id = $1::uuid AND status = 'Active'",
        )
        .bind(&partner)
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(crm_knows.is_some(), "CRM sees the partner");
    let building = app
        .create(
            "/api/crm/buildings",
            &sales,
            json!({"name": "Mombasa Trade Center", "address": "Moi Avenue", "status": "Active", "partner": partner}),
        )
        .await;
    let unit = app
        .create(
            "/api/crm/buildingUnits",
            &sales,
            json!({"unitNumber": "Apt 3B", "building": building, "status": "Vacant"}),
        )
        .await;
    let lead = app
        .create(
            "/api/crm/leads",
            &sales,
            json!({"leadSource": "Partner Referral", "referredBy": partner, "subscriberName": "John Kamau",
                   "subscriberPhone": "0712345678", "serviceLocation": unit}),
        )
        .await;
    let r = eventually(15, || async {
        let r = app
            .post(
                &format!("/api/crm/leads/{lead}/convert"),
                &sales,
                json!({"servicePlan": plan, "billingCycle": "Monthly",
                       "oneOffCharges": [{"description": "Installation Fee", "quantity": 1, "price": "1500"}]}),
            )
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("the lead converts (once Billing knows the plan)");
    // Sales Agents see no finance data: Billing names the first invoice.
    let sub = r.body["subscriber"]["id"].as_str().unwrap().to_string();
    let invoices = app
        .get(
            &format!("/api/billing/invoices?where[subscriber][equals]={sub}"),
            &billing,
        )
        .await;
    assert_eq!(invoices.body["totalDocs"], 1, "{:?}", invoices.body);
    let invoice = invoices.body["docs"][0]["id"].as_str().unwrap().to_string();

    // The first invoice, paid by STK push.
    let r = eventually(15, || async {
        let r = app
            .post("/api/mpesa/stk-push", &billing, json!({"invoice": invoice}))
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("STK push accepted");
    assert_eq!(r.body["doc"]["amount"], "4500.00");
    let commission = eventually(20, || async {
        let r = app
            .get(
                &format!("/api/mpesa/commissions?where[lead][equals]={lead}"),
                &billing,
            )
            .await;
        (r.body["totalDocs"] == 1).then(|| r.body["docs"][0].clone())
    })
    .await
    .expect("the paid first invoice makes the referral's commission payable");
    assert_eq!(commission["status"], "Pending Approval");
    assert_eq!(commission["partner"], partner.as_str());
    assert_eq!(commission["invoice"], invoice.as_str());
    assert_eq!(commission["amount"], "2000.00");
    let id = commission["id"].as_str().unwrap().to_string();

    let r = app
        .post(
            &format!("/api/mpesa/commissions/{id}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let paid = eventually(20, || async {
        let r = app
            .get(&format!("/api/mpesa/commissions/{id}"), &billing)
            .await;
        (r.body["status"] == "Paid").then_some(r.body)
    })
    .await
    .expect("the B2C result marks it Paid");
    let receipt = paid["receipt"].as_str().unwrap().to_string();

    // The B2C result, as Daraja sent it through the launcher, replayed.
    let http = reqwest::Client::new();
    let sent: Vec<Value> = http
        .get(format!("{daraja}/standin/callbacks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let result = sent
        .iter()
        .find(|c| {
            c["url"].as_str().unwrap_or("").ends_with("/b2c/result")
                && c["body"]["Result"]["TransactionID"] == receipt.as_str()
        })
        .expect("the B2C result callback")
        .clone();
    let replay = || async {
        http.post(result["url"].as_str().unwrap())
            .json(&result["body"])
            .send()
            .await
            .unwrap()
            .status()
    };
    for _ in 0..10 {
        assert_eq!(replay().await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| replay())).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");

    let expense = eventually(20, || async {
        let r = app
            .get(
                "/api/billing/expenses?where[category][equals]=Commissions",
                &billing,
            )
            .await;
        (r.body["totalDocs"] == 1).then(|| r.body["docs"][0].clone())
    })
    .await
    .expect("Billing books the commission as an expense");
    assert_eq!(expense["amount"], "2000.00");
    assert_eq!(expense["vendor"], "Jane Caretaker");
    assert!(
        expense["description"].as_str().unwrap().contains(&receipt),
        "{expense:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM billing.expenses WHERE category = 'Commissions'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM mpesa.commissions").await,
        1
    );
    let again = app
        .get(&format!("/api/mpesa/commissions/{id}"), &billing)
        .await;
    assert_eq!(again.body["receipt"], receipt.as_str());
    assert_eq!(again.body["status"], "Paid");
}
