//! The option lists that cross services, with the spec's exact strings: the one
//! copy every service's collection definitions (`Kind::Select(X::ALL)`), hooks and
//! consumers use. The service that owns a list is named on it; the others read it.

/// What every spec enum is, for code generic over them (e.g. reading a stored
/// document's field as one).
pub trait Spec: Sized + Copy + 'static {
    /// Every value, in the spec's order.
    const ALL: &'static [&'static str];
    fn parse(s: &str) -> Option<Self>;
    fn as_str(self) -> &'static str;
}

/// An enum of spec strings: `ALL` (for `Kind::Select`), `as_str`, `parse`, serde as
/// the string, and comparison with `&str`, `Option<&str>` and a JSON value, so a
/// status check names the variant. Exported so a service's own lists (M-Pesa's
/// commission states, say) are written the same way; the caller needs `serde`,
/// `sqlx` and `serde_json`, as every service has.
#[macro_export]
macro_rules! spec_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant),+
        }

        impl $name {
            /// Every value, in the spec's order.
            pub const ALL: &'static [&'static str] = &[$($s),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $s),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::options::Spec for $name {
            const ALL: &'static [&'static str] = $name::ALL;
            fn parse(s: &str) -> Option<Self> {
                $name::parse(s)
            }
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        /// Stored as its spec string (a `text` column); reading a value that is
        /// not one is an error, not a default.
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Self::parse(s).ok_or_else(|| format!("not a {}: {s:?}", stringify!($name)).into())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for Option<&str> {
            fn eq(&self, other: &$name) -> bool {
                *self == Some(other.as_str())
            }
        }

        /// A stored document's field, e.g. `doc["status"] == InvoiceStatus::Draft`.
        impl PartialEq<$name> for serde_json::Value {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == Some(other.as_str())
            }
        }
    };
}

spec_enum! {
    /// A subscriber's status (Billing owns it).
    SubscriberStatus {
        PendingInstallation = "Pending Installation",
        Active = "Active",
        Suspended = "Suspended",
        Deactivated = "Deactivated",
    }
}

spec_enum! {
    /// How often a plan or a subscriber is invoiced (Core's plans, Billing's subscribers).
    BillingCycle { Monthly = "Monthly", Quarterly = "Quarterly" }
}

spec_enum! {
    /// Why a subscriber is Suspended: the daily run (lifted by paying up) or staff
    /// (lifted only by staff). Billing owns it.
    SuspensionReason { NonPayment = "Non-payment", Manual = "Manual" }
}

spec_enum! {
    /// How a subscriber connects (NOC owns it; Billing shows it).
    ConnectionType {
        Pppoe = "PPPoE",
        IpoeDhcp = "IPoE/DHCP",
        StaticIp = "Static IP",
        Hotspot = "Hotspot",
    }
}

spec_enum! {
    /// An invoice's status (Billing owns it).
    InvoiceStatus {
        Draft = "Draft",
        Unpaid = "Unpaid",
        Paid = "Paid",
        Overdue = "Overdue",
        Cancelled = "Cancelled",
    }
}

spec_enum! {
    /// How a payment was made (Billing owns it; M-Pesa's credits are `Mpesa`).
    PaymentMethod { Mpesa = "Mpesa", BankTransfer = "Bank Transfer", Cash = "Cash" }
}

spec_enum! {
    /// A partner's status (Core owns it; CRM, wa-parser and M-Pesa read it).
    PartnerStatus { Prospect = "Prospect", Active = "Active", Inactive = "Inactive" }
}

spec_enum! {
    /// A staff member's status (Core owns it).
    StaffStatus { Active = "Active", Inactive = "Inactive" }
}

spec_enum! {
    /// A ticket's status (Support owns it).
    TicketStatus {
        Open = "Open",
        InProgress = "In Progress",
        Resolved = "Resolved",
        Closed = "Closed",
    }
}

spec_enum! {
    /// A ticket's priority (Support owns it).
    TicketPriority { Low = "Low", Medium = "Medium", High = "High" }
}

spec_enum! {
    /// A lead's status (CRM owns it).
    LeadStatus {
        New = "New",
        Contacted = "Contacted",
        SiteSurvey = "Site Survey",
        Converted = "Converted",
        Lost = "Lost",
    }
}

spec_enum! {
    /// Where a lead came from (CRM owns it).
    LeadSource {
        PartnerReferral = "Partner Referral",
        Website = "Website",
        DirectCall = "Direct Call",
    }
}

spec_enum! {
    /// A building's status (CRM owns it; NOC and Support read it).
    BuildingStatus {
        Prospecting = "Prospecting",
        Negotiating = "Negotiating",
        Active = "Active",
        Lost = "Lost",
    }
}

spec_enum! {
    /// A network resource's type (NOC owns it; Support reads it).
    ResourceType { Router = "Router", Antenna = "Antenna", Switch = "Switch", Cable = "Cable" }
}

spec_enum! {
    /// A network resource's status (NOC owns it; Support reads it).
    ResourceStatus {
        InStock = "In Stock",
        Deployed = "Deployed",
        Faulty = "Faulty",
        Retired = "Retired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_strings_round_trip_through_serde_and_parse() {
        for s in SubscriberStatus::ALL {
            let v = SubscriberStatus::parse(s).unwrap();
            assert_eq!(v.as_str(), *s);
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
        }
        assert_eq!(SuspensionReason::NonPayment.as_str(), "Non-payment");
        assert!("Suspended" == SubscriberStatus::Suspended);
        assert_eq!(SubscriberStatus::parse("suspended"), None);
    }
}
