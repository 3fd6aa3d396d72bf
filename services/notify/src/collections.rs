//! `GET /api/notify/deliveries`: Admin's read-only view of every delivery, with
//! the collection engine's list queries (`where[status][equals]=Failed`,
//! `sort=-createdAt`, ...). Deliveries are written only by requests and gateways.

use isp_events::payloads::{DeliveryStatus, NotificationCategory, NotificationChannel};
use isp_platform::auth::{Role, Roles};
use isp_platform::collection::{Collection, Field, Kind};

pub const CHANNELS: &[&str] = NotificationChannel::ALL;
pub const CATEGORIES: &[&str] = NotificationCategory::ALL;
pub const STATUSES: &[&str] = DeliveryStatus::ALL;

pub fn deliveries() -> Collection {
    let f = |name, column, kind| Field::new(name, column, kind).system();
    Collection::new(
        "notify",
        "deliveries",
        "delivery_log",
        "Delivery",
        vec![
            f("requester", "requester", Kind::TEXT),
            f("reference", "reference", Kind::TEXT),
            f("channel", "channel", Kind::Select(CHANNELS)),
            f("recipient", "recipient", Kind::TEXT),
            f("subject", "subject", Kind::TEXT),
            f("body", "body", Kind::TEXT_AREA),
            f("category", "category", Kind::Select(CATEGORIES)),
            f("status", "status", Kind::Select(STATUSES)),
            f("provider", "provider", Kind::TEXT),
            f("providerMessageId", "provider_message_id", Kind::TEXT),
            f("cost", "cost_text", Kind::TEXT),
            f("costCurrency", "cost_currency", Kind::TEXT),
            f("failureReason", "failure_reason", Kind::TEXT),
            f(
                "attempts",
                "attempts",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            ),
            f("lastError", "last_error", Kind::TEXT),
            f("nextAttemptAt", "next_attempt_at", Kind::Timestamp),
        ],
    )
    .access(
        Roles::of(&[Role::Admin]),
        Roles::NONE,
        Roles::NONE,
        Roles::NONE,
    )
}
