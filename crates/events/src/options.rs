//! The option lists that cross services, with the spec's exact strings: the one
//! copy every service's collection definitions (`Kind::Select(X::ALL)`), hooks and
//! consumers use. The service that owns a list is named on it; the others read it.

/// An enum of spec strings: `ALL` (for `Kind::Select`), `as_str`, `parse`, serde as
/// the string, and comparison with `&str` so a status check names the variant.
macro_rules! spec_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant),+
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
