//! M-Pesa over real HTTP, Postgres and NATS, with Core (staff, plans) and Billing
//! (subscribers, invoices, payments), against the Daraja stand-in that speaks
//! Daraja's wire format and calls back like Daraja does.

use std::time::Duration;

use daraja_standin::Standin;
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::{eventually, Res, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn core() -> (ServiceInfo, StartFn) {
    (svc_core::INFO, |c| Box::pin(svc_core::start(c)))
}
fn billing() -> (ServiceInfo, StartFn) {
    (svc_billing::INFO, |c| {
        let mut o = svc_billing::Options::default();
        o.schedule.enabled = false;
        Box::pin(svc_billing::start_with(c, o))
    })
}

/// Core and Billing on the TestApp, M-Pesa on its own listener (its settings
/// name this test's stand-in, which a `fn` StartFn cannot capture).
struct App {
    app: TestApp,
    base: String,
    daraja: Standin,
    pool: sqlx::PgPool,
    ctx: std::sync::Arc<isp_platform::ServiceContext>,
}

fn options(daraja: &Standin, base: &str) -> svc_mpesa::Options {
    let mut o = svc_mpesa::Options::from_env().expect("defaults");
    o.daraja.base_url = daraja.base.clone();
    o.daraja.consumer_key = daraja.config.consumer_key.clone();
    o.daraja.consumer_secret = daraja.config.consumer_secret.clone();
    o.daraja.certificate_pem = Some(daraja_standin::CERT_PEM.to_string());
    o.callback_base_url = Some(base.to_string());
    o.stk_query_after = Duration::from_secs(2);
    o.pull_interval = None;
    o.tick = Duration::from_millis(200);
    o.b2c_status_after = Duration::from_secs(1);
    o
}

impl App {
    async fn start() -> App {
        Self::start_with(daraja_standin::Config::default(), |_| {}).await
    }

    async fn start_with(
        cfg: daraja_standin::Config,
        tune: impl FnOnce(&mut svc_mpesa::Options),
    ) -> App {
        let app = TestApp::spawn(&[core(), billing()]).await;
        let daraja = Standin::spawn(cfg).await.expect("stand-in");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let ctx = isp_platform::runtime::context(svc_mpesa::INFO, &app.shared)
            .await
            .expect("mpesa context");
        let mut o = options(&daraja, &base);
        tune(&mut o);
        let router = svc_mpesa::start_with(ctx.clone(), o).await.expect("mpesa");
        tokio::spawn(isp_platform::http::serve(
            listener,
            router,
            app.shared.shutdown.clone(),
        ));
        let pool = app.admin_pool().await;
        App {
            app,
            base,
            daraja,
            pool,
            ctx,
        }
    }

    async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        let mut r = self
            .app
            .http
            .request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.header("authorization", format!("JWT {t}"));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        Res {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }
    async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.req(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }
    async fn get(&self, path: &str, token: &str) -> Res {
        self.req(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// A subscriber with its first invoice, both known to M-Pesa's projection:
    /// (subscriber, invoice, account number, amount due).
    async fn subscriber(
        &self,
        admin: &str,
        price: i64,
        mpesa_number: &str,
    ) -> (String, String, String, String) {
        let r = self
            .app
            .post(
                "/api/core/plans",
                admin,
                json!({"name": format!("Home {}", uuid::Uuid::new_v4().simple()),
                "downloadSpeed": 10, "uploadSpeed": 5, "price": price, "billingCycle": "Monthly"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let plan = r.body["doc"]["id"].as_str().unwrap().to_string();
        let body = json!({"firstName": "Amina", "lastName": "Otieno", "mpesaNumber": mpesa_number,
            "servicePlan": plan, "billingCycle": "Monthly"});
        let r = eventually(15, || async {
            let r = self
                .app
                .post("/api/billing/subscribers", admin, body.clone())
                .await;
            (r.status == StatusCode::CREATED).then_some(r)
        })
        .await
        .expect("Billing learns the plan");
        let sub = r.body["doc"]["id"].as_str().unwrap().to_string();
        let inv = r.body["invoice"]["id"].as_str().unwrap().to_string();
        let acct = r.body["doc"]["accountNumber"].as_str().unwrap().to_string();
        let due = r.body["invoice"]["amountDue"].as_str().unwrap().to_string();
        let known = eventually(15, || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mpesa.invoices i JOIN mpesa.subscribers s ON s.id = i.subscriber_id WHERE i.id = $1::uuid")
                .bind(&inv)
                .fetch_one(&self.pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        })
        .await;
        assert!(
            known.is_some(),
            "M-Pesa projects the subscriber and invoice"
        );
        (sub, inv, acct, due)
    }

    async fn invoice_status(&self, token: &str, inv: &str, want: &str) -> bool {
        eventually(20, || async {
            let r = self
                .app
                .get(&format!("/api/billing/invoices/{inv}"), token)
                .await;
            (r.body["status"] == want).then_some(())
        })
        .await
        .is_some()
    }

    async fn billing_payments(&self, receipt: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM billing.payments WHERE payment_reference = $1")
            .bind(receipt)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    fn callbacks_to(&self, suffix: &str) -> Vec<Value> {
        self.daraja
            .callbacks()
            .into_iter()
            .filter(|c| c["url"].as_str().unwrap_or("").ends_with(suffix))
            .collect()
    }

    async fn wait_callback(&self, suffix: &str, n: usize) -> Vec<Value> {
        eventually(15, || async {
            let c = self.callbacks_to(suffix);
            (c.len() >= n).then_some(c)
        })
        .await
        .unwrap_or_else(|| panic!("no callback to {suffix}"))
    }

    async fn replay(&self, cb: &Value) -> StatusCode {
        self.app
            .http
            .post(cb["url"].as_str().unwrap())
            .json(&cb["body"])
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn simulate(&self, amount: &str, msisdn: &str, account: &str) {
        let token = self.oauth().await;
        let r = self
            .app
            .http
            .post(format!("{}/mpesa/c2b/v2/simulate", self.daraja.base))
            .bearer_auth(token)
            .json(&json!({"ShortCode": "174379", "CommandID": "CustomerPayBillOnline", "Amount": amount,
                "Msisdn": msisdn, "BillRefNumber": account}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    /// The token M-Pesa holds (a test must not fetch its own: that would cancel it).
    async fn oauth(&self) -> String {
        sqlx::query_scalar("SELECT access_token FROM mpesa.daraja_tokens")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn receipt_of(cb: &Value) -> String {
    cb["body"]["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["Name"] == "MpesaReceiptNumber")
        .unwrap()["Value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_stk_push_pays_the_invoice_once_however_often_the_callback_is_replayed() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (_, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;

    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["status"], "Pending");
    assert_eq!(r.body["doc"]["phone"], "+254712345678");
    assert_eq!(r.body["doc"]["accountReference"], acct.as_str());
    assert_eq!(r.body["doc"]["amount"], due.as_str());
    // A second prompt while the first waits is refused.
    let again = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    assert_eq!(again.error_path(), Some("invoice"));

    let cbs = t.wait_callback("/stk", 1).await;
    let receipt = receipt_of(&cbs[0]);
    assert!(
        t.invoice_status(&bm, &inv, "Paid").await,
        "the invoice becomes Paid"
    );
    // Ten sequential and ten concurrent replays of the same callback.
    for _ in 0..10 {
        assert_eq!(t.replay(&cbs[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&cbs[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.billing_payments(&receipt).await, 1);
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 1);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.payment.confirmed'")
            .await,
        1
    );
    // Every callback is in the log; the replays as duplicates.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback'")
            .await,
        21
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Duplicate'").await,
        20
    );
    let list = t.get("/api/mpesa/stkRequests", &bm).await;
    assert_eq!(list.body["docs"][0]["status"], "Paid", "{:?}", list.body);
    assert_eq!(list.body["docs"][0]["receipt"], receipt.as_str());
    assert_eq!(list.body["docs"][0]["settledBy"], "Callback");
    // The log never holds the STK password.
    let raw: Value =
        sqlx::query_scalar("SELECT raw FROM mpesa.transactions WHERE kind = 'STK Push'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(raw["request"]["Password"], "<redacted>");
    // A Paid invoice is refused.
    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
}

#[tokio::test]
async fn stk_push_names_every_bad_field_and_checks_roles() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;

    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": "nope", "phone": "+14155552671", "amount": 5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, vec!["amount", "invoice", "phone"]);
    let r = t.post("/api/mpesa/stk-push", &admin, json!({})).await;
    assert_eq!(r.error_path(), Some("invoice"));
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_path(), Some("invoice"));
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": inv, "phone": "0712 34"}),
        )
        .await;
    assert_eq!(r.error_path(), Some("phone"));
    let r = t
        .req(
            reqwest::Method::POST,
            "/api/mpesa/stk-push",
            None,
            Some(json!({"invoice": inv})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .post("/api/mpesa/stk-push", &tech, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = t.get("/api/mpesa/stkRequests", &tech).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nothing was saved by the refusals.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests")
            .await,
        0
    );
    // Another service may ask with the scope.
    let svc = t.app.service_token("billing", &["mpesa.stkPush.create"]);
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &svc,
            json!({"invoice": inv, "phone": "0722000111"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["doc"]["trigger"], "Service");
    assert_eq!(r.body["doc"]["phone"], "+254722000111");
}

#[tokio::test]
async fn an_outstanding_amount_above_the_daraja_limit_is_refused() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 300_000, "0712345678").await;
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("invoice"));
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("250000"));
}

#[tokio::test]
async fn failed_prompts_are_recorded_with_their_reason() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (_, inv, _, _) = t.subscriber(&admin, 1032, "0712345678").await;
    let r = t
        .post("/api/mpesa/stk-push", &bm, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let failed = eventually(15, || async {
        let r = t.get(&format!("/api/mpesa/stkRequests/{id}"), &bm).await;
        (r.body["status"] == "Failed").then_some(r.body)
    })
    .await
    .expect("the cancelled prompt is Failed");
    assert_eq!(failed["resultCode"], "1032");
    assert_eq!(failed["resultDescription"], "Request cancelled by user");
    // A string ResultCode, as seen in production.
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &bm,
            json!({"invoice": inv, "phone": "254700000500"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    let failed = eventually(15, || async {
        let r = t.get(&format!("/api/mpesa/stkRequests/{id}"), &bm).await;
        (r.body["status"] == "Failed").then_some(r.body)
    })
    .await
    .expect("Failed");
    assert_eq!(failed["resultCode"], "SFC_IC0003");
    assert!(t.invoice_status(&bm, &inv, "Unpaid").await);
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 0);
}

#[tokio::test]
async fn a_lost_stk_callback_is_settled_by_the_query_and_credited_once() {
    // The customer takes 3 s: the first query (after 2 s) hears "being processed".
    let cfg = daraja_standin::Config {
        callback_delay: Duration::from_secs(3),
        ..Default::default()
    };
    let t = App::start_with(cfg, |_| {}).await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    let r = t
        .post(
            "/api/mpesa/stk-push",
            &admin,
            json!({"invoice": inv, "phone": "254700000404"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["doc"]["id"].as_str().unwrap().to_string();
    assert!(
        t.invoice_status(&admin, &inv, "Paid").await,
        "settled without a callback"
    );
    let doc = t
        .get(&format!("/api/mpesa/stkRequests/{id}"), &admin)
        .await
        .body;
    assert_eq!(doc["status"], "Paid");
    assert_eq!(doc["settledBy"], "Query");
    assert!(doc["receipt"].is_string(), "{doc}");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Query' AND status = 'Processing'").await,
        1,
        "the first query found it still being processed"
    );
    assert!(t.callbacks_to("/stk").is_empty());
    assert_eq!(
        t.billing_payments(doc["receipt"].as_str().unwrap()).await,
        1
    );
    // A late callback for the same money changes nothing.
    let late = json!({"Body": {"stkCallback": {"MerchantRequestID": doc["merchantRequestId"],
        "CheckoutRequestID": doc["checkoutRequestId"], "ResultCode": 0, "ResultDesc": "ok",
        "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 2500.0},
            {"Name": "MpesaReceiptNumber", "Value": doc["receipt"]}, {"Name": "PhoneNumber", "Value": 254700000404i64}]}}}});
    let url = format!("{}/hooks/daraja/{}/stk", t.base, hook_token(&t).await);
    let s = t
        .app
        .http
        .post(&url)
        .json(&late)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        t.billing_payments(doc["receipt"].as_str().unwrap()).await,
        1
    );
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 1);
}

async fn hook_token(t: &App) -> String {
    sqlx::query_scalar("SELECT value FROM mpesa.settings WHERE key = 'callback_token'")
        .fetch_one(&t.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn callbacks_need_the_path_token_and_unknown_requests_are_recorded_and_ignored() {
    let t = App::start().await;
    let body = json!({"Body": {"stkCallback": {"MerchantRequestID": "1", "CheckoutRequestID": "ws_CO_never",
        "ResultCode": 0, "ResultDesc": "ok", "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 10},
        {"Name": "MpesaReceiptNumber", "Value": "FAKE000001"}]}}}});
    let wrong = t
        .app
        .http
        .post(format!("{}/hooks/daraja/not-the-token/stk", t.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback'")
            .await,
        0
    );
    let url = format!("{}/hooks/daraja/{}/stk", t.base, hook_token(&t).await);
    let ok = t.app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = t.app.http.post(&url).body("not json").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Unknown request'").await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'STK Callback' AND status = 'Malformed'").await,
        1
    );
    assert_eq!(t.scalar_i64("SELECT count(*) FROM mpesa.payments").await, 0);
}

#[tokio::test]
async fn c2b_validation_matches_normalised_account_numbers_and_confirmation_credits_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;
    // Registered at start.
    let registered = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'").await == 1).then_some(())
    })
    .await;
    assert!(registered.is_some());
    // Typed with spaces: still the subscriber.
    let typed = format!(" {} {} ", &acct[..3], &acct[3..]);
    t.simulate(due.trim_end_matches(".00"), "254712345678", &typed)
        .await;
    let conf = t.wait_callback("/c2b/confirmation", 1).await;
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    let receipt = conf[0]["body"]["TransID"].as_str().unwrap().to_string();
    // The payer arrives hashed.
    assert_eq!(conf[0]["body"]["MSISDN"].as_str().unwrap().len(), 64);
    for _ in 0..10 {
        assert_eq!(t.replay(&conf[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&conf[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.billing_payments(&receipt).await, 1);
    let p = t.get("/api/mpesa/payments", &admin).await;
    assert_eq!(p.body["totalDocs"], 1, "{:?}", p.body);
    assert_eq!(p.body["docs"][0]["subscriber"], sub.as_str());
    assert_eq!(p.body["docs"][0]["accountReference"], acct.as_str());
    assert_eq!(p.body["docs"][0]["billRefNumber"], typed.trim());

    // A missing check digit is not a match: rejected with C2B00012, never confirmed.
    t.simulate("100", "254712345678", &acct[..acct.len() - 1])
        .await;
    let v = t.wait_callback("/c2b/validation", 2).await;
    assert_eq!(v.len(), 2);
    let rejected = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Validation' AND result_code = 'C2B00012'").await == 1).then_some(())
    })
    .await;
    assert!(rejected.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(t.callbacks_to("/c2b/confirmation").len(), 1);
}

#[tokio::test]
async fn with_accept_all_unknown_accounts_are_kept_as_unallocated_with_the_payer_suggested() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.c2b_accept_all = true
    })
    .await;
    let admin = t.app.admin_token().await;
    let (sub, _, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    t.simulate("700", "254712345678", "WRONG-REF").await;
    let kept = eventually(15, || async {
        let r = t.app.get("/api/billing/unallocatedPayments", &admin).await;
        (r.body["totalDocs"] == 1).then_some(r.body)
    })
    .await
    .expect("Billing keeps the money as unallocated");
    assert_eq!(kept["docs"][0]["accountReference"], "WRONG-REF");
    let p = t.get("/api/mpesa/payments", &admin).await;
    assert_eq!(
        p.body["docs"][0]["suggestedSubscriber"],
        sub.as_str(),
        "{:?}",
        p.body
    );
    assert!(p.body["docs"][0]["subscriber"].is_null());
}

#[tokio::test]
async fn a_missed_c2b_confirmation_is_recovered_by_pull_transactions_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, acct, due) = t.subscriber(&admin, 2500, "0712345678").await;
    eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register'")
            .await
            == 1)
            .then_some(())
    })
    .await
    .unwrap();
    // Paid, but Daraja never calls the confirmation URL.
    t.simulate(due.trim_end_matches(".00"), "254700000404", &acct)
        .await;
    t.wait_callback("/c2b/validation", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(t.callbacks_to("/c2b/confirmation").is_empty());
    let r = t.post("/api/mpesa/c2b/pull", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["credited"], 1);
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    let r = t.post("/api/mpesa/c2b/pull", &admin, json!({})).await;
    assert_eq!(r.body["credited"], 0, "a second pull credits nothing");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.payments").await,
        1
    );
}

#[tokio::test]
async fn replicas_share_one_daraja_token_and_renew_it_once_when_daraja_refuses_it() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    eventually(10, || async {
        (t.daraja.tokens_issued() >= 1).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(t.daraja.tokens_issued(), 1);
    // Another replica's view of the same schema.
    let d = svc_mpesa::daraja::Daraja::new(options(&t.daraja, &t.base).daraja, t.ctx.pool.clone())
        .unwrap();
    let _ = d.token(None).await.unwrap();
    assert_eq!(t.daraja.tokens_issued(), 1, "the shared token is reused");
    // Daraja cancels it (someone fetched another): the next call renews once.
    t.daraja.expire_token();
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(t.daraja.tokens_issued(), 2);
}

// ---------------------------------------------------------------------------
// partner commissions (B2C)
// ---------------------------------------------------------------------------

impl App {
    /// A partner (created in Core with `rate`) whose referral's first invoice
    /// (plan `price`) is paid by STK push: (commission id, partner id).
    async fn earned_commission(&self, admin: &str, rate: &str, price: i64) -> (String, String) {
        let phone = format!("07{:08}", rand_digits());
        let partner = self
            .app
            .post(
                "/api/core/partners",
                admin,
                json!({"fullName": "Jane Caretaker", "phoneNumber": phone, "mpesaNumber": "0722000111",
                       "status": "Active", "commissionRate": rate}),
            )
            .await
            .expect(StatusCode::CREATED)
            .id();
        let (sub, inv, _, _) = self.subscriber(admin, price, "0712345678").await;
        self.app
            .publish(
                "crm",
                &isp_events::payloads::LeadConverted {
                    lead_id: uuid::Uuid::now_v7(),
                    referred_by: Some(partner.parse().unwrap()),
                    subscriber_id: sub.parse().unwrap(),
                    converted_at: chrono::Utc::now(),
                },
            )
            .await;
        let r = self
            .post("/api/mpesa/stk-push", admin, json!({"invoice": inv}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let id = eventually(20, || async {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT id FROM mpesa.commissions WHERE partner_id = $1::uuid",
            )
            .bind(&partner)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
        })
        .await
        .expect("the paid first invoice makes the referral's commission payable");
        (id.to_string(), partner)
    }

    async fn commission_status(&self, token: &str, id: &str, want: &str) -> Value {
        eventually(20, || async {
            let r = self
                .get(&format!("/api/mpesa/commissions/{id}"), token)
                .await;
            (r.body["status"] == want).then_some(r.body)
        })
        .await
        .unwrap_or_else(|| panic!("commission {id} never {want}"))
    }
}

fn rand_digits() -> u32 {
    (uuid::Uuid::new_v4().as_u128() % 100_000_000) as u32
}

#[tokio::test]
async fn a_referral_earns_one_commission_that_admin_approves_and_b2c_pays_once() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (c, partner) = t.earned_commission(&admin, "1500.50", 2500).await;

    let r = t.get(&format!("/api/mpesa/commissions/{c}"), &bm).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "Pending Approval");
    assert_eq!(r.body["partner"], partner.as_str());
    assert_eq!(r.body["amount"], "1500.50");
    // B2C pays whole shillings: half away from zero.
    assert_eq!(r.body["payoutAmount"], "1501.00");
    assert_eq!(r.body["basis"], "Flat");
    let list = t.get("/api/mpesa/commissions", &admin).await;
    assert_eq!(list.body["totalDocs"], 1, "{:?}", list.body);
    assert_eq!(
        t.get("/api/mpesa/commissions", &tech).await.status,
        StatusCode::FORBIDDEN
    );
    let path = format!("/api/mpesa/commissions/{c}/approve");
    let r = t.post(&path, &bm, json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "only Admin approves: {:?}",
        r.body
    );

    let r = t.post(&path, &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        matches!(r.body["doc"]["status"].as_str(), Some("Sent" | "Paid")),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["doc"]["originatorConversationId"],
        format!("{c}-1").as_str()
    );
    assert_eq!(r.body["doc"]["phone"], "+254722000111");
    let again = t.post(&path, &admin, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);

    let paid = t.commission_status(&bm, &c, "Paid").await;
    let receipt = paid["receipt"].as_str().unwrap().to_string();
    assert!(!receipt.is_empty());
    assert_eq!(paid["paidAmount"], "1501.00");

    // The result callback replayed ten times in a row and ten at once.
    let cbs = t.wait_callback("/b2c/result", 1).await;
    for _ in 0..10 {
        assert_eq!(t.replay(&cbs[0]).await, StatusCode::OK);
    }
    let all = futures::future::join_all((0..10).map(|_| t.replay(&cbs[0]))).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Result'")
            .await,
        21
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Result' AND status = 'Settled already (Paid)'").await,
        20
    );
    // Billing books it once as an expense, the receipt as its reference.
    let booked = eventually(20, || async {
        let r = t
            .app
            .get(
                "/api/billing/expenses?where[category][equals]=Commissions",
                &bm,
            )
            .await;
        (r.body["totalDocs"] == 1).then_some(r.body)
    })
    .await
    .expect("an expense in Billing");
    let e = &booked["docs"][0];
    assert_eq!(e["amount"], "1501.00");
    assert_eq!(e["vendor"], "Jane Caretaker");
    assert!(
        e["description"].as_str().unwrap().contains(&receipt),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.expenses WHERE category = 'Commissions'")
            .await,
        1
    );
    // The request is in the log, without the SecurityCredential.
    let raw: Value =
        sqlx::query_scalar("SELECT raw FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(raw["request"]["SecurityCredential"], "<redacted>");
    assert_eq!(raw["request"]["Amount"], 1501);
    // A second paid invoice of the same subscriber earns nothing more.
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.commissions").await,
        1
    );
}

#[tokio::test]
async fn approval_refuses_what_b2c_would_refuse_and_a_failed_commission_may_be_retried() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (small, _) = t.earned_commission(&admin, "5", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{small}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["payoutAmount"]);
    let retry = t
        .post(
            &format!("/api/mpesa/commissions/{small}/retry"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{:?}", retry.body);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .await,
        0,
        "nothing is sent"
    );
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{}/approve", uuid::Uuid::now_v7()),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = t
        .post(
            "/api/mpesa/commissions/not-an-id/approve",
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_path(), Some("id"));

    // The stand-in fails B2C of KES 2040 (unregistered customer).
    let (c, _) = t.earned_commission(&admin, "2040", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let failed = t.commission_status(&admin, &c, "Failed").await;
    assert_eq!(failed["resultCode"], "2040");
    assert!(failed["receipt"].is_null());
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/retry"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["doc"]["attempts"], 2);
    assert_eq!(
        r.body["doc"]["originatorConversationId"],
        format!("{c}-2").as_str()
    );
    t.commission_status(&admin, &c, "Failed").await;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT originator_conversation_id FROM mpesa.transactions WHERE kind = 'B2C Request' ORDER BY created_at",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(ids, vec![format!("{c}-1"), format!("{c}-2")]);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_queue_timeout_leaves_the_commission_sent_until_transaction_status_settles_it() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    // The stand-in answers B2C of KES 1111 with the queue-timeout callback only.
    let (c, _) = t.earned_commission(&admin, "1111", 2500).await;
    let r = t
        .post(
            &format!("/api/mpesa/commissions/{c}/approve"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    t.wait_callback("/b2c/timeout", 1).await;
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert!(paid["receipt"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(paid["statusQueries"].as_i64().unwrap() >= 1);
    assert!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Timeout'")
            .await
            >= 1
    );
    assert!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'Transaction Status Result' AND status = 'Paid'").await
            == 1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
}

#[tokio::test]
async fn commissions_up_to_the_setting_are_approved_and_paid_automatically() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.commissions.auto_approve_up_to = Some(rust_decimal::Decimal::from(2000))
    })
    .await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(paid["approvedBy"], "Automatic");
    let (big, _) = t.earned_commission(&admin, "3000", 2500).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = t
        .get(&format!("/api/mpesa/commissions/{big}"), &admin)
        .await;
    assert_eq!(r.body["status"], "Pending Approval", "{:?}", r.body);
}

#[tokio::test]
async fn reconciliation_puts_every_receipt_in_exactly_one_place_and_names_bad_parameters() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.c2b_accept_all = true
    })
    .await;
    let admin = t.app.admin_token().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let (tech, _) = t.app.staff_token("Technician").await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let stk_amount: String =
        sqlx::query_scalar("SELECT amount::text FROM mpesa.payments WHERE source = 'stk'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    t.post(
        &format!("/api/mpesa/commissions/{c}/approve"),
        &admin,
        json!({}),
    )
    .await;
    t.commission_status(&admin, &c, "Paid").await;
    // Money for an account that does not exist: unallocated.
    t.simulate("700", "254733000111", "NOSUCH99").await;
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Africa::Nairobi)
        .date_naive();
    let q = format!(
        "/api/mpesa/reconciliation?from={}&to={}",
        today.pred_opt().unwrap(),
        today.succ_opt().unwrap()
    );
    let r = eventually(20, || async {
        let r = t.get(&q, &bm).await;
        (r.body["receipts"]["count"] == 2 && r.body["matched"]["count"] == 1).then_some(r)
    })
    .await
    .expect("both receipts, the STK one matched to its invoice");
    let b = &r.body;
    assert_eq!(b["matched"]["total"], stk_amount.as_str(), "{b:?}");
    assert_eq!(b["unallocated"]["count"], 1);
    assert_eq!(b["unallocated"]["total"], "700.00");
    let want_total =
        stk_amount.parse::<rust_decimal::Decimal>().unwrap() + rust_decimal::Decimal::from(700);
    assert_eq!(
        b["receipts"]["total"],
        isp_platform::money::format(want_total).as_str()
    );
    assert_eq!(b["balanced"], true);
    assert_eq!(b["unallocatedReceipts"][0]["billRefNumber"], "NOSUCH99");
    assert_eq!(b["bySource"]["c2b"]["total"], "700.00");
    assert_eq!(b["commissionsPaid"]["count"], 1);
    assert_eq!(b["commissionsPaid"]["total"], "1500.00");
    assert_eq!(
        b["net"],
        isp_platform::money::format(want_total - rust_decimal::Decimal::from(1500)).as_str()
    );
    // Another range holds none of it.
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2020-01-01&to=2020-01-31",
            &admin,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["receipts"]["count"], 0);
    assert_eq!(r.body["balanced"], true);

    let r = t.get("/api/mpesa/reconciliation", &bm).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.error_paths(), vec!["from", "to"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-13-01&to=yesterday&x=1",
            &bm,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, vec!["from", "to", "x"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-02-01&to=2026-01-01",
            &bm,
        )
        .await;
    assert_eq!(r.error_paths(), vec!["to"]);
    let r = t
        .get(
            "/api/mpesa/reconciliation?from=2026-01-01&to=2026-01-02",
            &tech,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn confirmations_arriving_while_nats_is_down_reach_billing_once_when_it_returns() {
    let mut t = App::start().await;
    let admin = t.app.admin_token().await;
    let mut subs = vec![];
    for _ in 0..3 {
        subs.push(t.subscriber(&admin, 1800, "0712345678").await);
    }
    let registered = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'").await == 1).then_some(())
    })
    .await;
    assert!(registered.is_some());
    t.app.nats.stop().await;
    for (_, _, acct, due) in &subs {
        t.simulate(due.trim_end_matches(".00"), "254712345678", acct)
            .await;
    }
    let conf = t.wait_callback("/c2b/confirmation", 3).await;
    // Each confirmation replayed while NATS is still down.
    for c in &conf {
        for _ in 0..3 {
            assert_eq!(t.replay(c).await, StatusCode::OK);
        }
    }
    let credited = eventually(10, || async {
        (t.scalar_i64("SELECT count(*) FROM mpesa.payments").await == 3).then_some(())
    })
    .await;
    assert!(credited.is_some(), "M-Pesa keeps working without NATS");
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.payment.confirmed' AND published_at IS NULL").await,
        3,
        "the outbox holds the events"
    );
    t.app.nats.restart().await.expect("nats-server restarts");
    for (_, inv, _, _) in &subs {
        assert!(
            t.invoice_status(&admin, inv, "Paid").await,
            "invoice {inv} Paid once NATS is back"
        );
    }
    for c in &conf {
        let receipt = c["body"]["TransID"].as_str().unwrap();
        assert_eq!(t.billing_payments(receipt).await, 1, "{receipt}");
    }
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM billing.payments").await,
        3
    );
}

#[tokio::test]
async fn a_b2c_request_daraja_took_before_a_crash_is_not_paid_twice_when_the_worker_sends_it_again()
{
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let ocid = format!("{c}-1");
    // What an approval commits before it sends...
    sqlx::query(
        "UPDATE mpesa.commissions SET status = 'Approved', attempts = 1, originator_conversation_id = $2,
             approved_by = 'admin', approved_at = now(), send_claimed_until = now() + interval '1 hour'
         WHERE id = $1::uuid",
    )
    .bind(&c)
    .bind(&ocid)
    .execute(&t.pool)
    .await
    .unwrap();
    // ...then the request reaches Daraja and the process dies: nothing recorded,
    // and the result callback goes nowhere.
    let o = options(&t.daraja, &t.base);
    let daraja = svc_mpesa::daraja::Daraja::new(o.daraja, t.ctx.pool.clone()).unwrap();
    let (_, res) = daraja
        .b2c(
            &ocid,
            1500,
            "254722000111",
            "Partner referral commission",
            "http://127.0.0.1:9/lost",
            "http://127.0.0.1:9/lost",
        )
        .await;
    assert!(res.is_ok(), "{res:?}");
    let lost = t.wait_callback("/lost", 1).await;
    let receipt = lost[0]["body"]["Result"]["TransactionID"]
        .as_str()
        .unwrap()
        .to_string();
    // After the restart the claim has expired: the worker sends the attempt again.
    sqlx::query("UPDATE mpesa.commissions SET send_claimed_until = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&c)
        .execute(&t.pool)
        .await
        .unwrap();
    let paid = t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(
        paid["receipt"],
        receipt.as_str(),
        "the one payment Daraja made"
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request' AND status LIKE 'Duplicate%'").await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.outbox WHERE type = 'mpesa.commission.paid'")
            .await,
        1
    );
    // Daraja made one payment: one result (to the lost URL), no second.
    assert_eq!(t.callbacks_to("/b2c/result").len(), 0);
}

#[tokio::test]
async fn with_automatic_prompts_a_new_invoice_is_prompted_once_and_paid() {
    let t = App::start_with(daraja_standin::Config::default(), |o| {
        o.auto_stk = svc_mpesa::AutoStk::parse("created").unwrap()
    })
    .await;
    let admin = t.app.admin_token().await;
    let (_, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    assert!(
        t.invoice_status(&admin, &inv, "Paid").await,
        "the automatic prompt is paid"
    );
    let r = t.get("/api/mpesa/stkRequests", &admin).await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    assert_eq!(r.body["docs"][0]["trigger"], "Invoice Created");
    assert_eq!(r.body["docs"][0]["requestedBy"], "automatic");
    // The same invoice.created again (a redelivery, a replay): no second prompt.
    let snap: Value = t
        .app
        .get(&format!("/api/billing/invoices/{inv}"), &admin)
        .await
        .body;
    let ev = t
        .app
        .publish(
            "billing",
            &isp_events::payloads::InvoiceCreated(isp_events::payloads::InvoiceSnapshot {
                id: inv.parse().unwrap(),
                invoice_number: snap["invoiceNumber"].as_str().unwrap().into(),
                subscriber: snap["subscriber"].as_str().unwrap().parse().unwrap(),
                amount_due: snap["amountDue"].as_str().unwrap().parse().unwrap(),
                due_date: snap["dueDate"].as_str().unwrap().parse().unwrap(),
                status: isp_events::options::InvoiceStatus::Unpaid,
                updated_at: chrono::Utc::now() - chrono::Duration::minutes(5),
            }),
        )
        .await;
    let applied = eventually(15, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM mpesa.processed_events WHERE consumer = 'mpesa-billing' AND event_id = $1",
        )
        .bind(ev)
        .fetch_one(&t.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(applied.is_some(), "M-Pesa applied the replayed event");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests")
            .await,
        1
    );
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.auto_prompts WHERE status = 'Sent'")
            .await,
        1
    );
}

#[tokio::test]
async fn mpesa_partners_ignore_older_snapshots_and_stay_deleted() {
    std::env::set_var("ISP_MPESA_C2B_REGISTER_AT_START", "false");
    let app = TestApp::spawn(&[isp_testkit::service!(svc_mpesa)]).await;
    isp_testkit::projection::ProjectionCase {
        app: &app,
        source: "core",
        service: "mpesa",
        durable: "mpesa-core",
        probe: "SELECT full_name, deleted FROM partners WHERE id = $1",
    }
    .check_tombstone(isp_testkit::fixtures::partner_snapshot)
    .await;
}

#[tokio::test]
async fn the_commission_is_at_the_rate_in_force_at_the_conversion_whatever_order_events_arrive() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, _, _) = t.subscriber(&admin, 2500, "0712345678").await;
    let partner = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let snap = |rate: i64, at| isp_events::payloads::PartnerSnapshot {
        commission_rate: rate.into(),
        mpesa_number: "+254722000111".into(),
        ..isp_testkit::fixtures::partner_snapshot(partner, "Jane Caretaker", at)
    };
    // The conversion reaches M-Pesa before anything about the partner.
    t.app
        .publish(
            "crm",
            &isp_events::payloads::LeadConverted {
                lead_id: uuid::Uuid::now_v7(),
                referred_by: Some(partner),
                subscriber_id: sub.parse().unwrap(),
                converted_at: now - chrono::Duration::minutes(10),
            },
        )
        .await;
    // The partner had 1000 then; 3000 since.
    t.app
        .publish(
            "core",
            &isp_events::payloads::PartnerCreated(snap(1000, now - chrono::Duration::hours(1))),
        )
        .await;
    t.app
        .publish(
            "core",
            &isp_events::payloads::PartnerUpdated(snap(3000, now - chrono::Duration::minutes(1))),
        )
        .await;
    let r = t
        .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let c = eventually(20, || async {
        let r = t.get("/api/mpesa/commissions", &admin).await;
        (r.body["totalDocs"] == 1).then(|| r.body["docs"][0].clone())
    })
    .await
    .expect("a commission");
    assert_eq!(c["commissionRate"], "1000.00");
    assert_eq!(c["amount"], "1000.00");
    assert_eq!(c["invoice"], inv.as_str());
    assert_eq!(c["subscriber"], sub.as_str());
}

#[tokio::test]
async fn a_prompt_whose_answer_was_lost_with_a_restart_does_not_block_the_invoice() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (sub, inv, acct, _) = t.subscriber(&admin, 2500, "0712345678").await;
    // What a crash between saving the prompt and recording Daraja's answer leaves.
    sqlx::query(
        "INSERT INTO mpesa.stk_requests (id, invoice_id, subscriber_id, account_reference, phone, amount, created_at)
         VALUES ($1, $2::uuid, $3::uuid, $4, '+254712345678', 2500, now() - interval '1 hour')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&inv)
    .bind(&sub)
    .bind(&acct)
    .execute(&t.pool)
    .await
    .unwrap();
    let r = eventually(10, || async {
        let r = t
            .post("/api/mpesa/stk-push", &admin, json!({"invoice": inv}))
            .await;
        (r.status == StatusCode::CREATED).then_some(r)
    })
    .await
    .expect("a new prompt once the lost one is marked Failed");
    assert_eq!(r.body["doc"]["status"], "Pending");
    assert!(t.invoice_status(&admin, &inv, "Paid").await);
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.stk_requests WHERE status = 'Failed' AND result_code = 'No answer'").await,
        1
    );
}

#[tokio::test]
async fn two_simultaneous_approvals_send_one_payment() {
    let t = App::start().await;
    let admin = t.app.admin_token().await;
    let (c, _) = t.earned_commission(&admin, "1500", 2500).await;
    let path = format!("/api/mpesa/commissions/{c}/approve");
    let (a, b) = tokio::join!(
        t.post(&path, &admin, json!({})),
        t.post(&path, &admin, json!({}))
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{:?} {:?}", a.body, b.body);
    t.commission_status(&admin, &c, "Paid").await;
    assert_eq!(
        t.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'B2C Request'")
            .await,
        1
    );
}

#[tokio::test]
async fn billing_books_a_paid_commission_once_however_often_it_hears_of_it() {
    let t = App::start().await;
    let (bm, _) = t.app.staff_token("Billing Manager").await;
    let paid = isp_events::payloads::MpesaCommissionPaid {
        commission: uuid::Uuid::now_v7(),
        partner: uuid::Uuid::now_v7(),
        partner_name: "Jane Caretaker".into(),
        amount: rust_decimal::Decimal::from(1500),
        receipt: "TBK1234567".into(),
        phone: "+254722000111".into(),
        lead: None,
        subscriber: None,
        paid_at: chrono::Utc::now(),
    };
    // Two events (two ids: JetStream's de-duplication does not apply).
    t.app.publish("mpesa", &paid).await;
    let last = t.app.publish("mpesa", &paid).await;
    t.app.processed_by("billing", "billing-mpesa", last).await;
    let r = t
        .app
        .get(
            "/api/billing/expenses?where[category][equals]=Commissions",
            &bm,
        )
        .await;
    assert_eq!(r.body["totalDocs"], 1, "{:?}", r.body);
    assert_eq!(
        r.body["docs"][0]["id"],
        paid.commission.to_string().as_str()
    );
    assert_eq!(r.body["docs"][0]["amount"], "1500.00");
    assert!(r.body["docs"][0]["description"]
        .as_str()
        .unwrap()
        .contains("TBK1234567"));
}
