//! The CloudEvents 1.0 envelope (JSON structured mode).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::payloads::EventPayload;

pub const SPEC_VERSION: &str = "1.0";
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The NATS header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One event as it travels on the bus and sits in the outbox.
///
/// ```json
/// {"specversion":"1.0","id":"0190...","source":"/isp/billing",
///  "type":"subscriber.created","subject":"<subscriber id>",
///  "time":"2026-01-01T10:00:00Z","datacontenttype":"application/json","data":{...}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// UUIDv7: unique, and sortable by creation time. Also the `Nats-Msg-Id`.
    pub id: Uuid,
    /// `/isp/<service>` of the producer.
    pub source: String,
    /// e.g. `subscriber.created`; see [`crate::payloads`].
    pub r#type: String,
    /// The id of the entity the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: DateTime<Utc>,
    #[serde(default = "default_content_type")]
    pub datacontenttype: String,
    #[serde(default)]
    pub data: serde_json::Value,
    /// W3C trace context; carried in the `traceparent` NATS header, not in the JSON.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

fn default_content_type() -> String {
    JSON_CONTENT_TYPE.to_string()
}

impl CloudEvent {
    /// A new event for `payload`, produced by `source_service` (e.g. `"billing"`),
    /// stamped now with a fresh UUIDv7 and the task's current trace context.
    pub fn new<P: EventPayload>(source_service: &str, payload: &P) -> serde_json::Result<Self> {
        Ok(Self {
            specversion: SPEC_VERSION.to_string(),
            id: Uuid::now_v7(),
            source: source_for(source_service),
            r#type: P::TYPE.to_string(),
            subject: Some(payload.subject_id()),
            time: Utc::now(),
            datacontenttype: JSON_CONTENT_TYPE.to_string(),
            data: serde_json::to_value(payload)?,
            traceparent: crate::trace::current_traceparent(),
        })
    }

    /// Deserializes `data` as `T`, whatever the event type.
    pub fn data_as<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        T::deserialize(&self.data)
    }

    /// `Ok(None)` unless this event is of `P`'s type; then its data as `P`.
    /// Lets a handler dispatch with `if let Some(p) = ev.payload::<PlanUpdated>()? {..}`.
    pub fn payload<P: EventPayload>(&self) -> serde_json::Result<Option<P>> {
        if self.is::<P>() {
            self.data_as::<P>().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether this event is of `P`'s type.
    pub fn is<P: EventPayload>(&self) -> bool {
        self.r#type == P::TYPE
    }

    /// The producing service named in `source` (`/isp/billing` -> `billing`).
    pub fn source_service(&self) -> Option<&str> {
        self.source.strip_prefix("/isp/")
    }

    /// The JSON body as published (without the trace context).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// Parses a published body; checks the spec version and that `id`/`type`
    /// were present (serde already requires them).
    pub fn from_json(body: &[u8]) -> anyhow::Result<Self> {
        let ev: CloudEvent = serde_json::from_slice(body)?;
        anyhow::ensure!(
            ev.specversion == SPEC_VERSION,
            "unsupported CloudEvents specversion {:?}",
            ev.specversion
        );
        anyhow::ensure!(!ev.r#type.is_empty(), "empty event type");
        Ok(ev)
    }
}

/// `/isp/<service>`.
pub fn source_for(service: &str) -> String {
    format!("/isp/{service}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payloads::{PlanSnapshot, PlanUpdated};
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn plan() -> PlanSnapshot {
        PlanSnapshot {
            id: Uuid::now_v7(),
            name: "Home Basic 10Mbps".into(),
            download_speed: 10,
            upload_speed: 5,
            price: Decimal::from_str("1500.00").unwrap(),
            billing_cycle: crate::options::BillingCycle::Monthly,
            plan_enabled: true,
            active_for_new_signups: true,
            ip_assignment_type: "Dynamic".into(),
            static_ip_pool: None,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn envelope_round_trips_with_wire_names() {
        let p = plan();
        let ev = CloudEvent::new("core", &PlanUpdated(p.clone())).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&ev.to_json().unwrap()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "plan.updated");
        assert_eq!(json["source"], "/isp/core");
        assert_eq!(json["subject"], p.id.to_string());
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["downloadSpeed"], 10);
        assert_eq!(json["data"]["price"], "1500.00");
        assert!(json.get("traceparent").is_none());

        let back = CloudEvent::from_json(&ev.to_json().unwrap()).unwrap();
        assert_eq!(back.id, ev.id);
        assert_eq!(back.payload::<PlanUpdated>().unwrap().unwrap().0, p);
        assert!(back
            .payload::<crate::payloads::PlanCreated>()
            .unwrap()
            .is_none());
        assert_eq!(back.source_service(), Some("core"));
    }

    #[test]
    fn rejects_non_cloudevents() {
        assert!(CloudEvent::from_json(b"{\"hello\":1}").is_err());
        assert!(CloudEvent::from_json(b"not json").is_err());
    }
}
