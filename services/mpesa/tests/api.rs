//! M-Pesa over real HTTP, Postgres and NATS, with Core (staff, plans) and Billing
//! (subscribers, invoices, payments), against the Daraja stand-in that speaks
//! Daraja's wire format and calls back like Daraja does.

#[path = "api/c2b.rs"]
mod c2b;
#[path = "api/commissions.rs"]
mod commissions;
#[path = "api/daraja_token.rs"]
mod daraja_token;
#[path = "api/projections.rs"]
mod projections;
#[path = "api/reconciliation.rs"]
mod reconciliation;
#[path = "api/stk.rs"]
mod stk;

use std::time::Duration;

use daraja_standin::Standin;
use isp_platform::runtime::{ServiceInfo, StartFn};
use isp_testkit::{eventually, service, Res, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn core() -> (ServiceInfo, StartFn) {
    service!(svc_core)
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

    /// Pays into the paybill at the stand-in, once M-Pesa has registered its
    /// C2B URLs there (it does so in the background at start).
    async fn simulate(&self, amount: &str, msisdn: &str, account: &str) {
        let registered = eventually(15, || async {
            (self.scalar_i64("SELECT count(*) FROM mpesa.transactions WHERE kind = 'C2B Register' AND status = 'Registered'").await >= 1).then_some(())
        })
        .await;
        assert!(registered.is_some(), "C2B URLs never registered");
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

async fn hook_token(t: &App) -> String {
    sqlx::query_scalar("SELECT value FROM mpesa.settings WHERE key = 'callback_token'")
        .fetch_one(&t.pool)
        .await
        .unwrap()
}

// Partner commissions (B2C): used by the commissions and reconciliation areas.
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
