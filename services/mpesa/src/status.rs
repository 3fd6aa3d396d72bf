//! M-Pesa's own state lists: the collections' `Select` options and every status
//! check in the code come from these, so a state is named, never spelled.

isp_events::spec_enum! {
    /// A partner commission: Pending Approval -> Approved (B2C being sent) -> Sent
    /// (Daraja took it) -> Paid, or Failed at any step (Admin may retry a Failed one).
    CommissionStatus {
        PendingApproval = "Pending Approval",
        Approved = "Approved",
        Sent = "Sent",
        Paid = "Paid",
        Failed = "Failed",
    }
}

impl CommissionStatus {
    /// Still waiting on Daraja: the result callback or Transaction Status settles it.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Approved | Self::Sent)
    }
}

isp_events::spec_enum! {
    /// An STK prompt: Requested (being sent) -> Pending (Daraja took it; the
    /// customer has the prompt) -> Paid or Failed.
    StkStatus {
        Requested = "Requested",
        Pending = "Pending",
        Paid = "Paid",
        Failed = "Failed",
    }
}

impl StkStatus {
    /// Not settled yet: a failure callback may still mark it Failed.
    pub fn open(self) -> bool {
        matches!(self, Self::Requested | Self::Pending)
    }
}
