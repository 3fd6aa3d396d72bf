//! The `data` of every event type: one contract for all services.
//!
//! JSON is camelCase. Money is [`Decimal`] serialized as a string (`"1500.00"`),
//! calendar dates are [`NaiveDate`] (`"2026-01-31"`), instants are RFC 3339 UTC,
//! references to other entities are their [`Uuid`]. Select fields travel as the
//! spec's option labels (`"Pending Installation"`, `"Static-Public"`, ...).
//!
//! Entities that other services project carry a full snapshot, and the same
//! snapshot struct is wrapped per event type (`PlanCreated(PlanSnapshot)`,
//! `PlanUpdated(PlanSnapshot)`, ...; the wrapper is transparent on the wire and
//! derefs to the snapshot). A projection can then upsert from any of them and
//! compare `updatedAt` to ignore stale ones.
//!
//! Optional fields deserialize as `None` when absent, so adding one later does
//! not break older consumers or older events in the stream.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::options::{
    BillingCycle, BuildingStatus, ConnectionType, InvoiceStatus, LeadSource, LeadStatus,
    PartnerStatus, PaymentMethod, ResourceStatus, ResourceType, StaffStatus, SubscriberStatus,
    TicketPriority, TicketStatus,
};

/// A typed event payload. `TYPE` is the CloudEvents `type`, `SERVICE` the
/// producing service; the NATS subject is `isp.<SERVICE>.<TYPE>`.
pub trait EventPayload: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const SERVICE: &'static str;

    /// The id of the entity this event is about (the CloudEvents `subject`).
    fn subject_id(&self) -> String;

    /// `isp.<SERVICE>.<TYPE>`, e.g. `isp.billing.subscriber.created`.
    fn nats_subject() -> String {
        nats_subject(Self::SERVICE, Self::TYPE)
    }
}

/// `isp.<service>.<type>`.
pub fn nats_subject(service: &str, event_type: &str) -> String {
    format!("isp.{service}.{event_type}")
}

/// Declares transparent per-type wrappers around one snapshot struct.
macro_rules! snapshot_events {
    ($snapshot:ty, $service:literal, |$s:ident| $subject:expr;
     $($(#[$meta:meta])* $name:ident = $ty:literal;)+) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(transparent)]
            pub struct $name(pub $snapshot);

            impl EventPayload for $name {
                const TYPE: &'static str = $ty;
                const SERVICE: &'static str = $service;
                fn subject_id(&self) -> String {
                    let $s = &self.0;
                    $subject.to_string()
                }
            }

            impl std::ops::Deref for $name {
                type Target = $snapshot;
                fn deref(&self) -> &$snapshot {
                    &self.0
                }
            }

            impl From<$name> for $snapshot {
                fn from(e: $name) -> $snapshot {
                    e.0
                }
            }
        )+
    };
}

/// Implements [`EventPayload`] for a struct that is its own payload.
macro_rules! plain_event {
    ($name:ty, $service:literal, $ty:literal, |$s:ident| $subject:expr) => {
        impl EventPayload for $name {
            const TYPE: &'static str = $ty;
            const SERVICE: &'static str = $service;
            fn subject_id(&self) -> String {
                let $s = self;
                $subject.to_string()
            }
        }
    };
}

// ---------------------------------------------------------------------------
// core
// ---------------------------------------------------------------------------

/// A service plan as Core holds it. Billing and NOC project it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSnapshot {
    pub id: Uuid,
    pub name: String,
    /// Mbps.
    pub download_speed: u32,
    /// Mbps.
    pub upload_speed: u32,
    /// KES per billing cycle.
    pub price: Decimal,
    /// `Monthly` | `Quarterly`.
    pub billing_cycle: BillingCycle,
    pub plan_enabled: bool,
    pub active_for_new_signups: bool,
    /// `Dynamic` | `Static-Public`.
    pub ip_assignment_type: String,
    /// The NOC ipSubnet static IPs are drawn from (Static-Public plans).
    #[serde(default)]
    pub static_ip_pool: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { PlanSnapshot, "core", |p| p.id;
    /// `plan.created`
    PlanCreated = "plan.created";
    /// `plan.updated`
    PlanUpdated = "plan.updated";
    /// `plan.deleted`: the last snapshot before deletion.
    PlanDeleted = "plan.deleted";
}

/// A partner (house manager / caretaker). wa-parser projects it to recognise
/// senders; CRM to show referrers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartnerSnapshot {
    pub id: Uuid,
    pub full_name: String,
    /// Normalised E.164, e.g. `+254712345678`.
    pub phone_number: String,
    pub mpesa_number: String,
    /// `Prospect` | `Active` | `Inactive`.
    pub status: PartnerStatus,
    /// KES per converted referral.
    pub commission_rate: Decimal,
    pub referral_count: i32,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { PartnerSnapshot, "core", |p| p.id;
    /// `partner.created`
    PartnerCreated = "partner.created";
    /// `partner.updated` (also after each referral count increment)
    PartnerUpdated = "partner.updated";
    /// `partner.deleted`: the last snapshot before deletion.
    PartnerDeleted = "partner.deleted";
}

/// A staff member (no password, ever). NOC projects technicians for work orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaffSnapshot {
    pub id: Uuid,
    pub full_name: String,
    pub email: String,
    /// `Admin` | `Sales Agent` | `Billing Manager` | `Network Engineer` | `Technician` | `Support Agent`.
    pub role: String,
    /// `Active` | `Inactive`.
    pub status: StaffStatus,
    #[serde(default)]
    pub phone_number: Option<String>,
    /// Bumped by logout and by password, role and status changes: every service
    /// refuses this member's tokens whose `ver` claim is older (absent in events
    /// published before it existed: 0).
    #[serde(default)]
    pub token_version: i32,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { StaffSnapshot, "core", |s| s.id;
    /// `staff.created`
    StaffCreated = "staff.created";
    /// `staff.updated`
    StaffUpdated = "staff.updated";
}

// ---------------------------------------------------------------------------
// crm
// ---------------------------------------------------------------------------

/// A lead, minimal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadSnapshot {
    pub id: Uuid,
    /// `New` | `Contacted` | `Site Survey` | `Converted` | `Lost`.
    pub status: LeadStatus,
    /// `Partner Referral` | `Website` | `Direct Call`.
    pub lead_source: LeadSource,
    /// The referring partner.
    #[serde(default)]
    pub referred_by: Option<Uuid>,
    pub subscriber_name: String,
    pub subscriber_phone: String,
    /// The building unit.
    #[serde(default)]
    pub service_location: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { LeadSnapshot, "crm", |l| l.id;
    /// `lead.created`
    LeadCreated = "lead.created";
}

/// `lead.converted`: a lead became a subscriber. Core increments the referring
/// partner's `referralCount` once per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadConverted {
    pub lead_id: Uuid,
    #[serde(default)]
    pub referred_by: Option<Uuid>,
    pub subscriber_id: Uuid,
    pub converted_at: DateTime<Utc>,
}
plain_event!(LeadConverted, "crm", "lead.converted", |e| e.lead_id);

/// A building. Support and NOC project it for filters and resource locations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildingSnapshot {
    pub id: Uuid,
    pub name: String,
    pub address: String,
    /// `Prospecting` | `Negotiating` | `Active` | `Lost`.
    pub status: BuildingStatus,
    /// The caretaker partner.
    #[serde(default)]
    pub partner: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { BuildingSnapshot, "crm", |b| b.id;
    /// `building.created`
    BuildingCreated = "building.created";
    /// `building.updated`
    BuildingUpdated = "building.updated";
    /// `building.deleted`: the last snapshot before deletion.
    BuildingDeleted = "building.deleted";
}

// ---------------------------------------------------------------------------
// billing
// ---------------------------------------------------------------------------

/// A subscriber's business record as Billing holds it (no financial balance:
/// Support and NOC project this and must not see finance data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberSnapshot {
    pub id: Uuid,
    pub account_number: String,
    pub first_name: String,
    pub last_name: String,
    pub mpesa_number: String,
    #[serde(default)]
    pub contact_phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// `Pending Installation` | `Active` | `Suspended` | `Deactivated`.
    pub status: SubscriberStatus,
    /// The plan id.
    pub service_plan: Uuid,
    /// `Monthly` | `Quarterly`.
    pub billing_cycle: BillingCycle,
    #[serde(default)]
    pub next_due_date: Option<NaiveDate>,
    #[serde(default)]
    pub address_notes: Option<String>,
    /// The building unit.
    #[serde(default)]
    pub service_location: Option<Uuid>,
    #[serde(default)]
    pub building: Option<Uuid>,
    /// The lead it was converted from.
    #[serde(default)]
    pub lead_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { SubscriberSnapshot, "billing", |s| s.id;
    /// `subscriber.created` (status Pending Installation). NOC opens a New
    /// Installation work order.
    SubscriberCreated = "subscriber.created";
    /// `subscriber.updated`: any change to the snapshot, status changes included.
    SubscriberUpdated = "subscriber.updated";
}

/// A subscriber status transition. The event type says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatusChange {
    pub subscriber_id: Uuid,
    pub account_number: String,
    /// Why, for people: e.g. `Invoice INV-000123 overdue`, `Paid up`.
    #[serde(default)]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

snapshot_events! { SubscriberStatusChange, "billing", |s| s.subscriber_id;
    /// `subscriber.suspended`: NOC disables RADIUS and disconnects the session.
    SubscriberSuspended = "subscriber.suspended";
    /// `subscriber.reactivated`: paid up after a suspension; NOC re-enables RADIUS.
    SubscriberReactivated = "subscriber.reactivated";
    /// `subscriber.deactivated`: service ended; NOC disables RADIUS.
    SubscriberDeactivated = "subscriber.deactivated";
    /// `subscriber.activated`: installation complete, billing starts.
    SubscriberActivated = "subscriber.activated";
}

/// An invoice, without line items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceSnapshot {
    pub id: Uuid,
    pub invoice_number: String,
    pub subscriber: Uuid,
    pub amount_due: Decimal,
    pub due_date: NaiveDate,
    /// `Draft` | `Unpaid` | `Paid` | `Overdue` | `Cancelled`.
    pub status: InvoiceStatus,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { InvoiceSnapshot, "billing", |i| i.id;
    /// `invoice.created`
    InvoiceCreated = "invoice.created";
    /// `invoice.overdue`
    InvoiceOverdue = "invoice.overdue";
    /// `invoice.updated`: any other change (paid, cancelled).
    InvoiceUpdated = "invoice.updated";
}

/// `payment.received`: a payment was recorded against an invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentReceived {
    pub id: Uuid,
    /// e.g. the M-Pesa receipt number.
    pub payment_reference: String,
    pub invoice: Uuid,
    pub subscriber: Uuid,
    pub amount_paid: Decimal,
    /// `Mpesa` | `Bank Transfer` | `Cash`.
    pub payment_method: PaymentMethod,
    pub payment_date: NaiveDate,
    /// The subscriber's balance after this payment.
    pub account_balance: Decimal,
}
plain_event!(PaymentReceived, "billing", "payment.received", |e| e.id);

// ---------------------------------------------------------------------------
// noc
// ---------------------------------------------------------------------------

/// `subscriber.provisioned`: the subscriber is on the network (RADIUS written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberProvisioned {
    pub subscriber_id: Uuid,
    /// `PPPoE` | `IPoE/DHCP` | `Static IP` | `Hotspot`.
    pub connection_type: ConnectionType,
    #[serde(default)]
    pub assigned_ip: Option<String>,
    pub radius_username: String,
    pub at: DateTime<Utc>,
}
plain_event!(
    SubscriberProvisioned,
    "noc",
    "subscriber.provisioned",
    |e| e.subscriber_id
);

/// `subscriber.network_updated`: technical fields changed (Billing mirrors them;
/// Support projects the router for bulk-compose filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberNetworkUpdated {
    pub subscriber_id: Uuid,
    pub connection_type: ConnectionType,
    #[serde(default)]
    pub assigned_ip: Option<String>,
    /// The router resource.
    #[serde(default)]
    pub router: Option<Uuid>,
    /// When NOC made the change, so consumers can put updates in order (a late,
    /// older one must not undo a newer one). Absent in events from before it was
    /// added: fall back to the envelope's `time`.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}
plain_event!(
    SubscriberNetworkUpdated,
    "noc",
    "subscriber.network_updated",
    |e| e.subscriber_id
);

/// An inventory resource (routers, antennas, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSnapshot {
    pub id: Uuid,
    pub resource_name: String,
    /// `Router` | `Antenna` | `Switch` | `Cable`.
    pub resource_type: ResourceType,
    /// `In Stock` | `Deployed` | `Faulty` | `Retired`.
    pub status: ResourceStatus,
    /// The building.
    #[serde(default)]
    pub location: Option<Uuid>,
    /// A Router's management address (Support matches Zabbix hosts by it).
    #[serde(default)]
    pub management_ip: Option<String>,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { ResourceSnapshot, "noc", |r| r.id;
    /// `resource.created`
    ResourceCreated = "resource.created";
    /// `resource.updated`
    ResourceUpdated = "resource.updated";
    /// `resource.deleted`: the last snapshot before deletion.
    ResourceDeleted = "resource.deleted";
}

/// An IPAM subnet as NOC holds it (Core checks a Static-Public plan's
/// `staticIpPool` against these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpSubnetSnapshot {
    pub id: Uuid,
    /// Normalized CIDR, e.g. `100.64.10.0/29`.
    pub network: String,
    pub description: String,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { IpSubnetSnapshot, "noc", |s| s.id;
    /// `ipSubnet.created`
    IpSubnetCreated = "ipSubnet.created";
    /// `ipSubnet.updated`
    IpSubnetUpdated = "ipSubnet.updated";
    /// `ipSubnet.deleted`: the last snapshot before deletion.
    IpSubnetDeleted = "ipSubnet.deleted";
}

/// A Zabbix problem or recovery, as received by the NOC webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZabbixEvent {
    /// Zabbix's event id (of this problem, or of this recovery event).
    pub event_id: String,
    pub name: String,
    /// `Not classified` | `Information` | `Warning` | `Average` | `High` | `Disaster`.
    pub severity: String,
    pub host: String,
    #[serde(default)]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    pub at: DateTime<Utc>,
    /// On a recovery: the problem's event id it resolves.
    #[serde(default)]
    pub recovery_of: Option<String>,
}

snapshot_events! { ZabbixEvent, "noc", |z| z.recovery_of.as_deref().unwrap_or(&z.event_id);
    /// `network.problem`: Support opens one high-priority ticket per event id.
    NetworkProblem = "network.problem";
    /// `network.recovered`: Support resolves the ticket of `recoveryOf`. The
    /// CloudEvents subject is the problem's event id for both.
    NetworkRecovered = "network.recovered";
}

/// `network.problem_updated`: Zabbix sent an update of an open problem (an
/// acknowledgement, a comment, a severity change). Support adds a note to the
/// problem's ticket; it never opens one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkProblemUpdated {
    /// The problem's event id ({EVENT.ID} is the original problem in updates too).
    pub event_id: String,
    /// {EVENT.UPDATE.ACTION}, e.g. `acknowledged`, `commented`, `changed severity to High`.
    #[serde(default)]
    pub action: Option<String>,
    /// {EVENT.UPDATE.MESSAGE}
    #[serde(default)]
    pub message: Option<String>,
    /// {USER.FULLNAME} of whoever updated it in Zabbix.
    #[serde(default)]
    pub user: Option<String>,
    /// The severity now (after a severity change).
    #[serde(default)]
    pub severity: Option<String>,
    pub at: DateTime<Utc>,
}
plain_event!(
    NetworkProblemUpdated,
    "noc",
    "network.problem_updated",
    |e| e.event_id
);

// ---------------------------------------------------------------------------
// support
// ---------------------------------------------------------------------------

/// The ticket reference of the Zabbix problem `event_id`: Support names the
/// problem's ticket so, and the NOC's webhook answers Zabbix with it at once.
pub fn network_ticket_id(zabbix_event_id: &str) -> String {
    format!("NET-{zabbix_event_id}")
}

/// A support ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketSnapshot {
    pub id: Uuid,
    /// The human ticket number, e.g. `TCK-000042` (customer tickets) or
    /// `NET-<Zabbix event id>` (network tickets).
    #[serde(alias = "ticketID")]
    pub ticket_id: String,
    /// `Customer` (about one subscriber) | `Network` (a Zabbix problem, no subscriber).
    #[serde(default)]
    pub kind: Option<String>,
    /// Required on Customer tickets, absent on Network tickets.
    #[serde(default)]
    pub subscriber: Option<Uuid>,
    /// The Support Agent.
    #[serde(default)]
    pub assigned_to: Option<Uuid>,
    pub subject: String,
    /// e.g. `Open` | `In Progress` | `Resolved` | `Closed`.
    pub status: TicketStatus,
    /// e.g. `Low` | `Medium` | `High` | `Urgent`.
    pub priority: TicketPriority,
    pub updated_at: DateTime<Utc>,
}

snapshot_events! { TicketSnapshot, "support", |t| t.id;
    /// `ticket.created`
    TicketCreated = "ticket.created";
    /// `ticket.updated`
    TicketUpdated = "ticket.updated";
    /// `ticket.deleted`: the last snapshot before deletion.
    TicketDeleted = "ticket.deleted";
}

// ---------------------------------------------------------------------------
// mpesa
// ---------------------------------------------------------------------------

/// `mpesa.payment.confirmed`: Daraja confirmed a payment (STK callback or C2B
/// confirmation). Billing records one Payment per receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MpesaPaymentConfirmed {
    /// M-Pesa receipt number, e.g. `NLJ7RT61SV`.
    pub receipt: String,
    pub amount: Decimal,
    /// The payer's MSISDN.
    pub phone: String,
    /// The BillRefNumber (C2B) or AccountReference (STK): the account number.
    pub account_reference: String,
    /// The invoice an STK push was started for.
    #[serde(default)]
    pub invoice: Option<Uuid>,
    pub transaction_time: DateTime<Utc>,
    /// `stk` | `c2b`.
    pub source: String,
    /// What the payer typed (C2B BillRefNumber) when `accountReference` is the
    /// account number it was recognised as (case, spaces): kept for finance.
    #[serde(default)]
    pub bill_ref_number: Option<String>,
    /// sha256 of the payer's `2547...` number (C2B v2 carries only this).
    #[serde(default)]
    pub payer_sha256: Option<String>,
}
plain_event!(
    MpesaPaymentConfirmed,
    "mpesa",
    "mpesa.payment.confirmed",
    |e| e.receipt
);

/// `mpesa.commission.paid`: a partner's commission for a converted referral
/// reached their M-Pesa (B2C result). Billing records it as an expense (category
/// Commissions, the receipt as its reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MpesaCommissionPaid {
    pub commission: Uuid,
    pub partner: Uuid,
    pub partner_name: String,
    pub amount: Decimal,
    /// The B2C TransactionReceipt.
    pub receipt: String,
    /// The partner's M-Pesa number, E.164.
    pub phone: String,
    /// The converted lead and the subscriber whose first paid invoice earned it.
    #[serde(default)]
    pub lead: Option<Uuid>,
    #[serde(default)]
    pub subscriber: Option<Uuid>,
    pub paid_at: DateTime<Utc>,
}
plain_event!(MpesaCommissionPaid, "mpesa", "mpesa.commission.paid", |e| e
    .commission);

// ---------------------------------------------------------------------------
// notify
// ---------------------------------------------------------------------------

// How other services ask Notify to send. Every producer publishes the same
// [`NotificationRequest`] through its own outbox, wrapped in its own event type
// `notification.requested.<producer>` (types stay unique across services; the
// subject is `isp.<producer>.notification.requested.<producer>`). Notify consumes
// them all with one durable consumer on [`NOTIFICATION_REQUEST_FILTER`] and reads
// any of them with [`notification_request`], so a new producer only adds a wrapper
// below. The request's `id` is the idempotency id: Notify sends at most once per
// id, however often the event is delivered, and reports on that id.

/// The JetStream filter that matches every producer's request event.
pub const NOTIFICATION_REQUEST_FILTER: &str = "isp.*.notification.requested.>";
/// The event type prefix every request wrapper shares.
pub const NOTIFICATION_REQUEST_TYPE_PREFIX: &str = "notification.requested.";

crate::spec_enum! {
    /// `sms` | `email` (Notify owns it).
    NotificationChannel { Sms = "sms", Email = "email" }
}

crate::spec_enum! {
    /// `transactional` (invoices, outages, replies) | `promotional` (marketing:
    /// Notify refuses it to a suppressed recipient even if the requester forgot to
    /// filter).
    NotificationCategory { Transactional = "transactional", Promotional = "promotional" }
}

/// One message to send, as rendered by the requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequest {
    /// The idempotency id (UUID, chosen by the requester, e.g. derived from its
    /// message log row). Also the `deliveryId` of every `notification.status`
    /// about this send.
    pub id: Uuid,
    pub channel: NotificationChannel,
    /// E.164 phone (`+254712345678`) for `sms`, an email address for `email`.
    pub recipient: String,
    /// Email subject; ignored for SMS. Absent on an email: Notify's default
    /// subject (`ISP_NOTIFY_EMAIL_DEFAULT_SUBJECT`).
    #[serde(default)]
    pub subject: Option<String>,
    /// The text exactly as it is to be sent (already rendered, footer included).
    pub body: String,
    pub category: NotificationCategory,
    /// The requester's own reference (Support's message id, wa-parser's inbound
    /// message id), echoed back in every `notification.status`.
    #[serde(default)]
    pub reference: Option<String>,
}

snapshot_events! { NotificationRequest, "support", |r| r.id;
    /// `notification.requested.support`: Support asks Notify for one send
    /// (automated notifications, manual replies, each bulk recipient).
    SupportNotificationRequested = "notification.requested.support";
}

snapshot_events! { NotificationRequest, "wa-parser", |r| r.id;
    /// `notification.requested.waParser`: wa-parser's SMS replies to partners.
    WaParserNotificationRequested = "notification.requested.waParser";
}

/// The request in any producer's `notification.requested.*` event, with the
/// producing service (from the envelope's `source`); `None` for other events.
pub fn notification_request(
    ev: &crate::CloudEvent,
) -> serde_json::Result<Option<(String, NotificationRequest)>> {
    if !ev.r#type.starts_with(NOTIFICATION_REQUEST_TYPE_PREFIX) {
        return Ok(None);
    }
    let requester = ev
        .source_service()
        .map(str::to_string)
        .unwrap_or_else(|| ev.r#type[NOTIFICATION_REQUEST_TYPE_PREFIX.len()..].to_string());
    Ok(Some((requester, ev.data_as()?)))
}

crate::spec_enum! {
    /// Where a delivery stands. Notify never moves a delivery backwards
    /// ([`DeliveryStatus::rank`]); consumers that keep their own copy should apply
    /// the same rule, since events can arrive out of order.
    DeliveryStatus {
        /// Received by Notify, not yet handed to a provider (also while retrying).
        Queued = "Queued",
        /// The provider took it (Africa's Talking 100 to 102, Twilio `queued` /
        /// `accepted`); not yet on the network.
        Accepted = "Accepted",
        /// The provider handed it to the network (Twilio `sent`, AT `Sent`), or
        /// an SMTP server / the log-only provider accepted it (final for those).
        Sent = "Sent",
        /// Handset confirmed (AT `Success`, Twilio `delivered`).
        Delivered = "Delivered",
        /// The network could not deliver it (AT `Rejected` / `Failed` /
        /// `AbsentSubscriber`, Twilio `undelivered`).
        Undelivered = "Undelivered",
        /// The network gave up waiting (AT `Expired`).
        Expired = "Expired",
        /// Never sent: a permanent provider error (invalid number, insufficient
        /// balance), retries exhausted, or refused by Notify (suppressed, bad
        /// recipient). `failureReason` says which.
        Failed = "Failed",
    }
}

impl DeliveryStatus {
    /// Progress order: a status may replace another only if its rank is
    /// higher. The four outcomes share the top rank, so the first one reported
    /// is final (a late `Sent` does not undo `Delivered`, nor does a second
    /// outcome replace the first).
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Accepted => 1,
            Self::Sent => 2,
            Self::Delivered | Self::Undelivered | Self::Expired | Self::Failed => 3,
        }
    }
}

/// `notification.status`: a delivery's progress or outcome (Support updates its
/// Messages log). Published on every change, in the same transaction as it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// The request's `id` (Notify keys its delivery by it).
    pub delivery_id: Uuid,
    pub status: DeliveryStatus,
    /// `africastalking` | `twilio` | `smtp` | `log` (`none` when Notify refused
    /// it before choosing one).
    pub provider: String,
    pub at: DateTime<Utc>,
    /// The service that asked (`support`, `wa-parser`), so each ignores others'.
    #[serde(default)]
    pub requester: Option<String>,
    /// The request's `reference`, echoed.
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub channel: Option<NotificationChannel>,
    #[serde(default)]
    pub recipient: Option<String>,
    /// The provider's id (AT `messageId`, Twilio `MessageSid`, SMTP `Message-ID`).
    #[serde(default)]
    pub provider_message_id: Option<String>,
    /// What the provider charged, exact (AT's `"KES 0.8000"` is `cost` `"0.8000"`
    /// with `costCurrency` `"KES"`).
    #[serde(default)]
    pub cost: Option<Decimal>,
    #[serde(default)]
    pub cost_currency: Option<String>,
    /// Why it failed / was not delivered, as the provider said it
    /// (`InvalidPhoneNumber`, `InsufficientBalance`, `Twilio 21610: ...`,
    /// `DeliveryFailure`, ...), or Notify's own (`Suppressed`, `Retries exhausted: ...`).
    #[serde(default)]
    pub failure_reason: Option<String>,
}
plain_event!(NotificationStatus, "notify", "notification.status", |e| e
    .delivery_id);

/// A recipient's opt-out state changed: Support keeps the suppression list for
/// promotional sends from these (plus its own staff marking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionChange {
    /// E.164 phone (or email address for an email opt-out).
    pub recipient: String,
    pub channel: NotificationChannel,
    /// `africastalking-optout` (the gateway's opt-out callback), `inbound-stop`
    /// (a STOP reply), `twilio-21610` (Twilio refused: the number replied STOP
    /// to Twilio), `inbound-start` (a START reply; on removal).
    pub source: String,
    /// The keyword or text that caused it, where there was one.
    #[serde(default)]
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

snapshot_events! { SuppressionChange, "notify", |s| s.recipient;
    /// `suppression.added`: the recipient opted out.
    SuppressionAdded = "suppression.added";
    /// `suppression.removed`: the recipient opted back in (START).
    SuppressionRemoved = "suppression.removed";
}

/// Projections dispatch on an entity's events with this (see [`crate::projection`]).
pub use crate::projection::entity_change;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn all() -> Vec<(&'static str, &'static str)> {
        macro_rules! list { ($($t:ty),+ $(,)?) => { vec![$((<$t>::SERVICE, <$t>::TYPE)),+] } }
        list!(
            PlanCreated,
            PlanUpdated,
            PlanDeleted,
            PartnerCreated,
            PartnerUpdated,
            PartnerDeleted,
            StaffCreated,
            StaffUpdated,
            LeadCreated,
            LeadConverted,
            BuildingCreated,
            BuildingUpdated,
            BuildingDeleted,
            SubscriberCreated,
            SubscriberUpdated,
            SubscriberSuspended,
            SubscriberReactivated,
            SubscriberDeactivated,
            SubscriberActivated,
            InvoiceCreated,
            InvoiceOverdue,
            InvoiceUpdated,
            PaymentReceived,
            SubscriberProvisioned,
            SubscriberNetworkUpdated,
            ResourceCreated,
            ResourceUpdated,
            ResourceDeleted,
            NetworkProblem,
            NetworkRecovered,
            NetworkProblemUpdated,
            TicketCreated,
            TicketUpdated,
            TicketDeleted,
            MpesaPaymentConfirmed,
            MpesaCommissionPaid,
            SupportNotificationRequested,
            WaParserNotificationRequested,
            NotificationStatus,
            SuppressionAdded,
            SuppressionRemoved,
        )
    }

    #[test]
    fn event_types_are_unique_and_subjects_are_well_formed() {
        let all = all();
        let types: HashSet<_> = all.iter().map(|(_, t)| *t).collect();
        assert_eq!(types.len(), all.len(), "an event type is declared twice");
        for (service, ty) in all {
            let subject = nats_subject(service, ty);
            assert!(subject.starts_with("isp."));
            assert!(!subject.contains(' ') && !subject.contains('*') && !subject.contains('>'));
        }
        assert_eq!(
            SubscriberCreated::nats_subject(),
            "isp.billing.subscriber.created"
        );
    }

    #[test]
    fn money_is_a_string_and_dates_are_plain() {
        let p = PaymentReceived {
            id: Uuid::nil(),
            payment_reference: "NLJ7RT61SV".into(),
            invoice: Uuid::nil(),
            subscriber: Uuid::nil(),
            amount_paid: Decimal::new(150000, 2),
            payment_method: PaymentMethod::Mpesa,
            payment_date: NaiveDate::from_ymd_opt(2026, 1, 31).unwrap(),
            account_balance: Decimal::ZERO,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["amountPaid"], "1500.00");
        assert_eq!(v["paymentDate"], "2026-01-31");
        assert_eq!(v["paymentReference"], "NLJ7RT61SV");
        let back: PaymentReceived = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn recovery_shares_the_problems_subject() {
        let z = ZabbixEvent {
            event_id: "200".into(),
            name: "Link down".into(),
            severity: "High".into(),
            host: "core-sw1".into(),
            host_ip: None,
            trigger_id: None,
            at: Utc::now(),
            recovery_of: Some("100".into()),
        };
        assert_eq!(NetworkRecovered(z.clone()).subject_id(), "100");
        assert_eq!(
            NetworkProblem(ZabbixEvent {
                recovery_of: None,
                ..z
            })
            .subject_id(),
            "200"
        );
    }

    #[test]
    fn every_notification_request_matches_notifys_filter() {
        for (service, ty) in [
            (
                SupportNotificationRequested::SERVICE,
                SupportNotificationRequested::TYPE,
            ),
            (
                WaParserNotificationRequested::SERVICE,
                WaParserNotificationRequested::TYPE,
            ),
        ] {
            assert!(ty.starts_with(NOTIFICATION_REQUEST_TYPE_PREFIX));
            let subject = nats_subject(service, ty);
            let tokens: Vec<_> = subject.split('.').collect();
            // isp.*.notification.requested.>
            assert!(tokens.len() >= 5, "{subject}");
            assert_eq!(tokens[0], "isp");
            assert_eq!(&tokens[2..4], ["notification", "requested"]);
        }
        let req = NotificationRequest {
            id: Uuid::nil(),
            channel: NotificationChannel::Sms,
            recipient: "+254712345678".into(),
            subject: None,
            body: "Hi".into(),
            category: NotificationCategory::Promotional,
            reference: Some("m-1".into()),
        };
        let ev = crate::CloudEvent::new("wa-parser", &WaParserNotificationRequested(req.clone()))
            .unwrap();
        let v = serde_json::to_value(&ev.data).unwrap();
        assert_eq!(v["channel"], "sms");
        assert_eq!(v["category"], "promotional");
        assert_eq!(
            notification_request(&ev).unwrap(),
            Some(("wa-parser".to_string(), req))
        );
    }

    #[test]
    fn delivery_status_never_goes_backwards_and_old_events_still_parse() {
        assert!(DeliveryStatus::Delivered.rank() > DeliveryStatus::Sent.rank());
        assert_eq!(
            DeliveryStatus::Delivered.rank(),
            DeliveryStatus::Failed.rank()
        );
        let old = serde_json::json!({
            "deliveryId": Uuid::nil(), "status": "Sent", "provider": "log",
            "at": "2026-01-31T10:00:00Z"
        });
        let s: NotificationStatus = serde_json::from_value(old).unwrap();
        assert_eq!(s.status, DeliveryStatus::Sent);
        assert_eq!(
            DeliveryStatus::parse("Expired"),
            Some(DeliveryStatus::Expired)
        );
    }
}
