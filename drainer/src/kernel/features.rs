//! The kernel features drainer's programs need, each with the first Linux release that has it, so
//! a kernel that lacks one gets an error naming it rather than a bare EINVAL from bpf(2).
pub(super) struct Feature {
    what: &'static str,
    since: &'static str,
}

pub(super) const SK_LOOKUP: Feature = Feature {
    what: "sk_lookup programs",
    since: "5.9",
};
pub(super) const TP_BTF: Feature = Feature {
    what: "BTF tracepoints using bpf_get_socket_cookie and compare-and-exchange",
    since: "5.12",
};
pub(super) const TCP_ITER: Feature = Feature {
    what: "TCP socket iterators",
    since: "5.9",
};

impl Feature {
    /// The error context for a load that failed for want of this feature.
    pub(super) fn missing(&self) -> String {
        format!(
            "this kernel cannot load {} (Linux >= {} needed)",
            self.what, self.since
        )
    }
}
