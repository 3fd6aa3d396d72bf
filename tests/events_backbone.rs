//! The event backbone against real Postgres and a real nats-server: the outbox,
//! the relay and idempotent durable consumers (docs/contract.md#events).
//!
//! Each test gets its own database (schema `t`, like a service's own schema) and
//! its own nats-server. Waits are bounded polls; nothing sleeps to assert.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isp_events::async_nats::jetstream::context::Publish;
use isp_events::payloads::LeadConverted;
use isp_events::{
    handler_fn, outbox, spawn_consumer, spawn_relay, Bus, CancellationToken, CloudEvent,
    ConsumerSpec, EventHandler, EventPayload,
};
use isp_testkit::nats::TestNats;
use isp_testkit::pg::TestDb;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// A service with no migrations of its own: only the event tables.
static NO_SERVICE_MIGRATIONS: Migrator = Migrator {
    migrations: Cow::Borrowed(&[]),
    ignore_missing: false,
    locking: true,
    no_tx: false,
};

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    nats: TestNats,
    bus: Bus,
    pool: PgPool,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Last: dropped after the pools and tasks that use it.
    db: TestDb,
}

impl Env {
    async fn new() -> Env {
        let db = TestDb::create().await.expect("test database");
        let pool = schema_pool(&db, "t").await;
        let nats = TestNats::start().await.expect("nats-server");
        let bus = Bus::connect(&nats.url).await.expect("nats client");
        Env {
            nats,
            bus,
            pool,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            db,
        }
    }

    fn relay(&mut self) {
        self.tasks.push(spawn_relay(
            self.pool.clone(),
            self.bus.js.clone(),
            self.shutdown.clone(),
        ));
    }

    fn consumer(&mut self, pool: &PgPool, durable: &str, handler: impl EventHandler) {
        let spec = ConsumerSpec::new(durable, "isp.crm.>");
        self.tasks.push(spawn_consumer(
            pool.clone(),
            self.bus.js.clone(),
            spec,
            handler,
            self.shutdown.clone(),
        ));
    }

    fn consumer_spec(&mut self, spec: ConsumerSpec, handler: impl EventHandler) {
        self.tasks.push(spawn_consumer(
            self.pool.clone(),
            self.bus.js.clone(),
            spec,
            handler,
            self.shutdown.clone(),
        ));
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("background task stops on shutdown")
                .expect("background task did not panic");
        }
        self.pool.close().await;
    }
}

/// A pool whose connections use `search_path = <schema>`, as a service's do, with
/// the event tables migrated and a table the test handler writes its effects to.
async fn schema_pool(db: &TestDb, schema: &str) -> PgPool {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.admin_url)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let opts: PgConnectOptions = db.admin_url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .unwrap();
    isp_events::migrate(&pool, &NO_SERVICE_MIGRATIONS)
        .await
        .expect("event migrations");
    // Deliberately no unique key: a double-applied event shows up as two rows.
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL, lead_id uuid NOT NULL, replica text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// Records every `lead.converted` it applies in `effects`; ignores other types.
fn recording_handler(replica: &'static str) -> impl EventHandler {
    handler_fn(move |tx, ev| {
        Box::pin(async move {
            if let Some(lead) = ev.payload::<LeadConverted>()? {
                sqlx::query("INSERT INTO effects (event_id, lead_id, replica) VALUES ($1, $2, $3)")
                    .bind(ev.id)
                    .bind(lead.lead_id)
                    .bind(replica)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    })
}

fn lead_converted() -> LeadConverted {
    serde_json::from_value(json!({
        "leadId": Uuid::now_v7(),
        "referredBy": Uuid::now_v7(),
        "subscriberId": Uuid::now_v7(),
        "convertedAt": "2026-01-15T09:30:00Z",
    }))
    .unwrap()
}

/// Enqueues one event in its own committed transaction; returns its lead id.
async fn enqueue_committed(pool: &PgPool) -> Uuid {
    let payload = lead_converted();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, "crm", &payload).await.unwrap();
    tx.commit().await.unwrap();
    payload.lead_id
}

async fn effects_for(pool: &PgPool, lead_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE lead_id = $1")
        .bind(lead_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn stream_messages(bus: &Bus) -> u64 {
    bus.js
        .get_stream("ISP")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_event_is_published_and_applied_rolled_back_one_never_exists() {
    let mut env = Env::new().await;
    env.relay();
    let pool = env.pool.clone();
    env.consumer(&pool, "t-proj", recording_handler("a"));

    let committed = enqueue_committed(&env.pool).await;

    let rolled_back = lead_converted();
    let mut tx = env.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, "crm", &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();

    eventually("the committed event to be applied", WAIT, || async {
        effects_for(&pool, committed).await == 1
    })
    .await;

    // A later event makes it past the relay and the consumer, so the rolled-back
    // one had every chance to go first.
    let later = enqueue_committed(&env.pool).await;
    eventually("the later event to be applied", WAIT, || async {
        effects_for(&pool, later).await == 1
    })
    .await;
    eventually("both outbox rows to be marked published", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
        )
        .await
            == 2
    })
    .await;

    assert_eq!(effects_for(&pool, rolled_back.lead_id).await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 2);
    assert_eq!(
        stream_messages(&env.bus).await,
        2,
        "only committed events reach the stream"
    );
    let row: (String, serde_json::Value) =
        sqlx::query_as("SELECT subject, payload FROM outbox ORDER BY created_at LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.0, "isp.crm.lead.converted");
    assert_eq!(row.1["type"], "lead.converted");
    assert_eq!(row.1["source"], "/isp/crm");
    assert_eq!(row.1["data"]["leadId"], committed.to_string());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_written_while_nats_is_down_is_delivered_after_restart() {
    let mut env = Env::new().await;
    env.relay();
    let pool = env.pool.clone();
    env.consumer(&pool, "t-proj", recording_handler("a"));

    let before = enqueue_committed(&env.pool).await;
    eventually("the first event to be applied", WAIT, || async {
        effects_for(&pool, before).await == 1
    })
    .await;

    env.nats.stop().await;
    // Writes keep working while NATS is down.
    let during = enqueue_committed(&env.pool).await;
    eventually("the relay to record a failed publish", Duration::from_secs(20), || async {
        count(&pool, "SELECT count(*) FROM outbox WHERE published_at IS NULL AND attempts > 0 AND last_error IS NOT NULL").await == 1
    })
    .await;
    assert_eq!(effects_for(&pool, during).await, 0);

    env.nats.restart().await.expect("nats-server restarts");
    eventually(
        "the event written during the outage to be applied",
        Duration::from_secs(20),
        || async { effects_for(&pool, during).await == 1 },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        effects_for(&pool, before).await,
        1,
        "the restart replayed nothing twice"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_twice_is_applied_once() {
    let mut env = Env::new().await;
    let pool = env.pool.clone();
    env.consumer(&pool, "t-proj", recording_handler("a"));
    isp_events::ensure_stream(&env.bus.js).await.unwrap();

    // The same CloudEvent published twice under different Nats-Msg-Ids (as after
    // a relay retry outside the duplicate window): JetStream stores both.
    let payload = lead_converted();
    let event = CloudEvent::new("crm", &payload).unwrap();
    let body = event.to_json().unwrap();
    for msg_id in ["first", "second"] {
        let publish = Publish::build()
            .payload(body.clone().into())
            .message_id(msg_id);
        let ack = env
            .bus
            .js
            .send_publish(LeadConverted::nats_subject(), publish)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }
    // And once more with the event id as Nats-Msg-Id, twice: JetStream drops the second.
    for _ in 0..2 {
        let publish = Publish::build()
            .payload(body.clone().into())
            .message_id(event.id.to_string());
        env.bus
            .js
            .send_publish(LeadConverted::nats_subject(), publish)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(stream_messages(&env.bus).await, 3);

    // A later event through the outbox: once it is applied, every copy before it
    // has been handled.
    env.relay();
    let later = enqueue_committed(&env.pool).await;
    eventually("the later event to be applied", WAIT, || async {
        effects_for(&pool, later).await == 1
    })
    .await;

    assert_eq!(effects_for(&pool, payload.lead_id).await, 1);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events WHERE consumer = 't-proj' AND event_id = $1",
    )
    .bind(event.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_rolls_back_and_the_event_is_retried() {
    let mut env = Env::new().await;
    env.relay();
    let pool = env.pool.clone();
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let handler = handler_fn(move |tx, ev| {
        let flag = flag.clone();
        Box::pin(async move {
            if let Some(lead) = ev.payload::<LeadConverted>()? {
                sqlx::query(
                    "INSERT INTO effects (event_id, lead_id, replica) VALUES ($1, $2, 'a')",
                )
                .bind(ev.id)
                .bind(lead.lead_id)
                .execute(&mut *tx)
                .await?;
                // The first attempt fails after writing: that write must not survive.
                if !flag.swap(true, Ordering::SeqCst) {
                    anyhow::bail!("transient failure");
                }
            }
            Ok(())
        })
    });
    env.consumer(&pool, "t-proj", handler);

    let lead = enqueue_committed(&env.pool).await;
    eventually("the retried event to be applied", WAIT, || async {
        effects_for(&pool, lead).await == 1
    })
    .await;
    assert!(failed_once.load(Ordering::SeqCst));
    // Let any stray redelivery through before counting again.
    let later = enqueue_committed(&env.pool).await;
    eventually("a later event to be applied", WAIT, || async {
        effects_for(&pool, later).await == 1
    })
    .await;
    assert_eq!(effects_for(&pool, lead).await, 1);
    env.stop().await;
}

/// While a handler keeps failing on an event, the service's `failing_events`
/// holds one row for it (deliveries so far, the last error); once the event is
/// applied the row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_listed_while_it_fails_and_cleared_when_applied() {
    let mut env = Env::new().await;
    env.relay();
    let pool = env.pool.clone();
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let handler = handler_fn(move |tx, ev| {
        let flag = flag.clone();
        Box::pin(async move {
            if let Some(lead) = ev.payload::<LeadConverted>()? {
                if flag.load(Ordering::SeqCst) {
                    anyhow::bail!("the projection is broken for lead {}", lead.lead_id);
                }
                sqlx::query(
                    "INSERT INTO effects (event_id, lead_id, replica) VALUES ($1, $2, 'a')",
                )
                .bind(ev.id)
                .bind(lead.lead_id)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    });
    env.consumer(&pool, "t-proj", handler);

    let lead = enqueue_committed(&env.pool).await;
    eventually(
        "the failure to be listed after a redelivery",
        WAIT,
        || async {
            count(
                &pool,
                "SELECT count(*) FROM failing_events WHERE consumer = 't-proj' AND deliveries >= 2",
            )
            .await
                == 1
        },
    )
    .await;
    let (kind, error): (String, String) =
        sqlx::query_as("SELECT type, last_error FROM failing_events WHERE consumer = 't-proj'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "lead.converted");
    assert!(error.contains(&lead.to_string()), "{error}");
    assert_eq!(effects_for(&pool, lead).await, 0);

    broken.store(false, Ordering::SeqCst);
    eventually(
        "the event to be applied once healed",
        Duration::from_secs(30),
        || async { effects_for(&pool, lead).await == 1 },
    )
    .await;
    eventually("the row to be cleared", WAIT, || async {
        count(&pool, "SELECT count(*) FROM failing_events").await == 0
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumer_replicas_apply_each_of_200_events_exactly_once() {
    let mut env = Env::new().await;
    let replica_a = schema_pool_reuse(&env.db, "t").await;
    let replica_b = schema_pool_reuse(&env.db, "t").await;
    env.consumer(&replica_a, "t-proj", recording_handler("a"));
    env.consumer(&replica_b, "t-proj", recording_handler("b"));
    env.relay();

    // Two producers' worth of transactions: some single events, some batches.
    for chunk in 0..20 {
        let mut tx = env.pool.begin().await.unwrap();
        for _ in 0..10 {
            outbox::enqueue(&mut tx, "crm", &lead_converted())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        if chunk % 5 == 0 {
            tokio::task::yield_now().await;
        }
    }

    let pool = env.pool.clone();
    eventually(
        "200 events to be applied",
        Duration::from_secs(30),
        || async { count(&pool, "SELECT count(*) FROM effects").await >= 200 },
    )
    .await;
    // And nothing more arrives: a final marker goes through both replicas' queue.
    let marker = enqueue_committed(&env.pool).await;
    eventually("the marker event to be applied", WAIT, || async {
        effects_for(&pool, marker).await == 1
    })
    .await;

    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 201);
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT event_id) FROM effects").await,
        201
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM processed_events WHERE consumer = 't-proj'"
        )
        .await,
        201
    );
    let by_a = count(&pool, "SELECT count(*) FROM effects WHERE replica = 'a'").await;
    eprintln!("replica a applied {by_a}, replica b applied {}", 201 - by_a);
    env.stop().await;
    replica_a.close().await;
    replica_b.close().await;
}

/// The worst case for two replicas: both hold the same event at the same moment
/// (JetStream redelivered it to the second after the first's ack wait ran out while
/// its slow handler was still working). The second blocks on the first's
/// `processed_events` row, then finds it and applies nothing.
#[tokio::test]
async fn two_replicas_holding_the_same_event_at_once_apply_it_once() {
    let db = TestDb::create().await.unwrap();
    let replica_a = schema_pool(&db, "t").await;
    let replica_b = schema_pool_reuse(&db, "t").await;
    let event = CloudEvent::new("crm", &lead_converted()).unwrap();
    let slow = |replica: &'static str| {
        handler_fn(move |tx, ev| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects (event_id, lead_id, replica) VALUES ($1, $2, $3)")
                    .bind(ev.id)
                    .bind(Uuid::nil())
                    .bind(replica)
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            })
        })
    };
    let (handler_a, handler_b) = (slow("a"), slow("b"));
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            isp_events::consumer::apply(&replica_a, "t-proj", &handler_a, &event),
            isp_events::consumer::apply(&replica_b, "t-proj", &handler_b, &event),
        );
        let applied = [a.unwrap(), b.unwrap()];
        assert!(
            applied.iter().filter(|x| **x).count() <= 1,
            "both replicas applied the event: {applied:?}"
        );
    }
    assert_eq!(count(&replica_a, "SELECT count(*) FROM effects").await, 1);
    assert_eq!(
        count(
            &replica_a,
            "SELECT count(*) FROM processed_events WHERE consumer = 't-proj'"
        )
        .await,
        1
    );
    replica_a.close().await;
    replica_b.close().await;
}

/// Another pool on an already prepared schema (a second replica of a service).
async fn schema_pool_reuse(db: &TestDb, schema: &str) -> PgPool {
    let opts: PgConnectOptions = db.admin_url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.options([("search_path", schema)]))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_a_fresh_schema_replays_events_published_before_it_existed() {
    let mut env = Env::new().await;
    env.relay();
    let mut leads = Vec::new();
    for _ in 0..5 {
        leads.push(enqueue_committed(&env.pool).await);
    }
    let pool = env.pool.clone();
    eventually("5 events to be published", WAIT, || async {
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
        )
        .await
            == 5
    })
    .await;

    // A consumer created after the events: starts from the beginning of the stream.
    let first = CancellationToken::new();
    let handle = spawn_consumer(
        env.pool.clone(),
        env.bus.js.clone(),
        ConsumerSpec::new("t-proj", "isp.crm.>"),
        recording_handler("a"),
        first.clone(),
    );
    eventually("the new consumer to apply history", WAIT, || async {
        count(&pool, "SELECT count(*) FROM effects").await == 5
    })
    .await;
    first.cancel();
    handle.await.unwrap();

    // The same durable consumer (its ack floor is past all 5) started on an empty
    // schema, as after a service's database was rebuilt: it replays everything.
    let fresh = schema_pool(&env.db, "fresh").await;
    env.consumer(&fresh, "t-proj", recording_handler("b"));
    eventually("the fresh schema to converge", WAIT, || async {
        count(&fresh, "SELECT count(*) FROM effects").await == 5
    })
    .await;
    for lead in &leads {
        assert_eq!(effects_for(&fresh, *lead).await, 1);
        assert_eq!(
            effects_for(&pool, *lead).await,
            1,
            "the old schema saw each once"
        );
    }
    env.stop().await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_while_nats_is_down_catches_up_when_it_comes_up() {
    let mut env = Env::new().await;
    env.nats.stop().await;

    // Connecting does not wait for the server.
    let bus = tokio::time::timeout(Duration::from_secs(5), Bus::connect(&env.nats.url))
        .await
        .expect("connect returns while NATS is down")
        .unwrap();
    let pool = env.pool.clone();
    env.tasks.push(spawn_relay(
        pool.clone(),
        bus.js.clone(),
        env.shutdown.clone(),
    ));
    env.tasks.push(spawn_consumer(
        pool.clone(),
        bus.js.clone(),
        ConsumerSpec::new("t-proj", "isp.crm.>"),
        recording_handler("a"),
        env.shutdown.clone(),
    ));
    let lead = enqueue_committed(&pool).await;

    env.nats.restart().await.expect("nats-server starts");
    eventually(
        "the event to be applied once NATS is up",
        Duration::from_secs(20),
        || async { effects_for(&pool, lead).await == 1 },
    )
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_service_migrations_share_the_schemas_migrations_table() {
    let db = TestDb::create().await.expect("test database");
    // The schema does not exist yet: migrate creates it, as on a brand-new database.
    let opts: PgConnectOptions = db.admin_url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts.options([("search_path", "svc")]))
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("isp-test-migrations-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("20260101000000_widgets.sql"),
        "CREATE TABLE widgets (id int PRIMARY KEY);",
    )
    .unwrap();
    let service = Migrator::new(dir.as_path()).await.unwrap();

    isp_events::migrate(&pool, &service)
        .await
        .expect("first run");
    isp_events::migrate(&pool, &service)
        .await
        .expect("second run is a no-op");
    // An older build of the service (without its newest migration) still starts.
    isp_events::migrate(&pool, &NO_SERVICE_MIGRATIONS)
        .await
        .expect("older release");

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM svc._sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected: Vec<i64> = isp_events::MIGRATOR.iter().map(|m| m.version).collect();
    expected.push(20260101000000);
    assert_eq!(versions, expected);
    assert_eq!(versions[0], 1, "the event tables come first");
    for table in ["svc.outbox", "svc.processed_events", "svc.widgets"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(exists, "{table} exists");
    }
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer in lanes applies events of different keys at once and each key's
/// in stream order: here three referrers' conversions, four lanes, a handler that
/// takes a while. At most one event per key is ever in hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_in_lanes_keeps_each_keys_order_and_overlaps_other_keys() {
    let mut env = Env::new().await;
    sqlx::query("CREATE TABLE applied (seq bigserial, referrer uuid NOT NULL, converted_at timestamptz NOT NULL)")
        .execute(&env.pool)
        .await
        .unwrap();
    let in_hand = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (h, m) = (in_hand.clone(), most.clone());
    let handler = handler_fn(move |tx, ev| {
        let (h, m) = (h.clone(), m.clone());
        Box::pin(async move {
            let Some(lead) = ev.payload::<LeadConverted>()? else {
                return Ok(());
            };
            m.fetch_max(h.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
            sqlx::query("INSERT INTO applied (referrer, converted_at) VALUES ($1, $2)")
                .bind(lead.referred_by)
                .bind(lead.converted_at)
                .execute(&mut *tx)
                .await?;
            h.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    });
    env.consumer_spec(
        ConsumerSpec::new("t-lanes", "isp.crm.>")
            .lanes(4, |ev| ev.data["referredBy"].as_str().map(String::from)),
        handler,
    );
    env.relay();

    let referrers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let start: chrono::DateTime<chrono::Utc> = "2026-01-15T09:00:00Z".parse().unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    for i in 0..60i64 {
        let mut lead = lead_converted();
        lead.referred_by = Some(referrers[(i % 3) as usize]);
        lead.converted_at = start + chrono::Duration::seconds(i);
        outbox::enqueue(&mut tx, "crm", &lead).await.unwrap();
    }
    tx.commit().await.unwrap();

    let pool = env.pool.clone();
    eventually("60 events applied", Duration::from_secs(30), || async {
        count(&pool, "SELECT count(*) FROM applied").await == 60
    })
    .await;
    for r in &referrers {
        let order: Vec<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT converted_at FROM applied WHERE referrer = $1 ORDER BY seq")
                .bind(r)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(order.len(), 20);
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "one key's events in stream order"
        );
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most >= 2,
        "different keys were applied at once (at most {most} in hand)"
    );
    assert!(
        most <= 3,
        "never two events of one key at once (saw {most} in hand)"
    );
    env.stop().await;
}
