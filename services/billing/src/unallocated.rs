//! Unallocated M-Pesa payments: money that reached the paybill but that Billing
//! could not put on an invoice by itself (the account number matches no
//! subscriber, or the invoice refused it). Nothing is dropped: the receipt waits
//! here, readable by Admin and Billing Manager, until one of them allocates it to
//! an invoice, which records the Payment exactly as the M-Pesa consumer would have.

use axum::extract::{Path, State};
use axum::Json;
use isp_events::payloads::MpesaPaymentConfirmed;
use isp_platform::auth::{Principal, Roles};
use isp_platform::collection::{parse_id, Collection, Field, Kind};
use isp_platform::http::ApiJson;
use isp_platform::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::collections::FIN;
use crate::App;
use isp_platform::collection::Operation;

isp_events::spec_enum! {
    /// An unallocated payment waits Open until staff put it on an invoice.
    UnallocatedStatus { Open = "Open", Allocated = "Allocated" }
}
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Read-only list for finance; written by the M-Pesa consumer and `allocate`.
pub fn collection() -> Collection {
    Collection::new(
        "billing",
        "unallocatedPayments",
        "unallocated_payments",
        "Unallocated payment",
        vec![
            Field::new(
                "paymentReference",
                "payment_reference",
                Kind::Text { max: 100 },
            )
            .system(),
            Field::new("amount", "amount", Kind::Money).system(),
            Field::new("payerPhone", "payer_phone", Kind::TEXT).system(),
            Field::new("accountReference", "account_reference", Kind::TEXT).system(),
            Field::new("transactionTime", "transaction_time", Kind::Timestamp).system(),
            Field::new("source", "source", Kind::TEXT).system(),
            Field::new("reason", "reason", Kind::TEXT).system(),
            Field::new("status", "status", Kind::Select(UnallocatedStatus::ALL)).system(),
            Field::new("payment", "payment_id", Kind::Relation).system(),
            Field::new("allocatedBy", "allocated_by", Kind::Relation).system(),
            Field::new("allocatedAt", "allocated_at", Kind::Timestamp).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
    .action("allocate", FIN)
}

/// Keeps a confirmed M-Pesa payment that could not be recorded, with why. A
/// receipt already kept is left as it is (the same money announced twice).
pub async fn keep(
    tx: &mut PgConnection,
    m: &MpesaPaymentConfirmed,
    reason: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO unallocated_payments (id, payment_reference, amount, payer_phone,
             account_reference, transaction_time, source, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (payment_reference) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(&m.receipt)
    .bind(m.amount)
    .bind(&m.phone)
    .bind(&m.account_reference)
    .bind(m.transaction_time)
    .bind(&m.source)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tracing::warn!(receipt = %m.receipt, account = %m.account_reference, reason, "M-Pesa payment kept as unallocated");
    Ok(())
}

/// Whether a receipt is waiting here already.
pub async fn is_kept(tx: &mut PgConnection, receipt: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM unallocated_payments WHERE payment_reference = $1)",
    )
    .bind(receipt)
    .fetch_one(&mut *tx)
    .await
}

/// `POST /api/billing/unallocatedPayments/{id}/allocate`.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(allocate))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateInput {
    /// The invoice (id) the money pays.
    #[schema(format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    invoice: String,
}

/// Allocates an unallocated M-Pesa payment to an invoice (Admin, Billing Manager):
/// records the Payment (method Mpesa, the receipt as its reference, the
/// transaction's date), with everything a payment does (invoice Paid when
/// covered, balance, nextDueDate, reactivation), in one transaction.
#[utoipa::path(post, path = "/api/billing/unallocatedPayments/{id}/allocate", tag = "unallocatedPayments",
    params(("id" = Uuid, Path)), request_body = AllocateInput,
    extensions(("x-references" = json!(["invoice"]))),
    responses((status = 200, description = "{doc: the unallocated payment (Allocated), payment, message}"),
        (status = 400, description = "Bad invoice"), (status = 403), (status = 404),
        (status = 409, description = "Already allocated, or the invoice cannot take a payment")))]
async fn allocate(
    State(s): State<App>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<AllocateInput>,
) -> ApiResult<Json<Value>> {
    s.colls
        .unallocated
        .authorize(&p, Operation::Action("allocate"))?;
    let id = parse_id(&id)?;
    let invoice = Uuid::parse_str(input.invoice.trim())
        .map_err(|_| ApiError::field("invoice", "Must be a valid id."))?;
    let mut tx = s.ctx.pool.begin().await?;
    // Payments take the run lock and the subscriber before anything else; take
    // them first here too, so this row lock comes after them (one lock order).
    crate::daily::wait_for_run(&mut tx).await?;
    let sub: Option<Uuid> = sqlx::query_scalar("SELECT subscriber_id FROM invoices WHERE id = $1")
        .bind(invoice)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(sub) = sub else {
        return Err(ApiError::field("invoice", "Unknown invoice."));
    };
    crate::collections::lock_subscriber(&mut tx, sub).await?;
    let row: Option<(
        UnallocatedStatus,
        String,
        rust_decimal::Decimal,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT status, payment_reference, amount, transaction_time
             FROM unallocated_payments WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, receipt, amount, at)) = row else {
        return Err(ApiError::not_found("Unallocated payment"));
    };
    if status != UnallocatedStatus::Open {
        return Err(ApiError::conflict(
            "This payment has been allocated already.",
        ));
    }
    let mut data = Map::new();
    data.insert("paymentReference".into(), json!(receipt));
    data.insert("invoice".into(), json!(invoice.to_string()));
    data.insert(
        "amountPaid".into(),
        json!(isp_platform::money::format(amount)),
    );
    data.insert("paymentMethod".into(), json!("Mpesa"));
    data.insert(
        "paymentDate".into(),
        json!(at
            .with_timezone(&s.ctx.config.timezone)
            .date_naive()
            .to_string()),
    );
    // Recorded on the M-Pesa service's behalf (Billing Managers may not enter
    // M-Pesa receipts by hand); who allocated it is kept on this row.
    let mpesa = Principal::Service {
        name: "mpesa".into(),
        scopes: vec![],
    };
    let payment = s
        .colls
        .payments
        .create_in(&mut tx, &s.ctx, &mpesa, data)
        .await?;
    let payment_id = payment["id"]
        .as_str()
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("payment without id")))?;
    sqlx::query(
        "UPDATE unallocated_payments SET status = 'Allocated', payment_id = $2, allocated_by = $3,
                allocated_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(payment_id)
    .bind(p.staff_id())
    .execute(&mut *tx)
    .await?;
    let doc = s
        .colls
        .unallocated
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Unallocated payment"))?;
    tx.commit().await?;
    Ok(Json(json!({
        "doc": s.colls.unallocated.present(&p, &doc),
        "payment": s.colls.payments.present(&p, &payment),
        "message": format!("Payment {receipt} allocated."),
    })))
}
