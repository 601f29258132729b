//! The size of the table of connections found at start-up (`SEEDED`), from how many TCP sockets
//! the namespace holds: /proc/net/sockstat, an O(1) read made before the sweep that fills it.
use anyhow::{Context as _, Result};

/// Slots for the table: twice the namespace's TCP sockets and some room for those opening during
/// the sweep, so the table is at most about half full. Runs inside the guarded namespace.
pub(super) fn slots() -> Result<u32> {
    let sockets = tcp_sockets()?;
    u32::try_from(((sockets + 2048) * 2).next_power_of_two())
        .context("too many TCP sockets in the namespace to seed a table for")
}

/// TCP sockets of the calling thread's network namespace: hashed ones (listening, connecting,
/// established, closing), IPv4 and IPv6, plus TIME_WAIT sockets.
fn tcp_sockets() -> Result<u64> {
    // thread-self: the namespace of this thread, which may have entered another than the process.
    let read = |name: &str| {
        let path = format!("/proc/thread-self/net/{name}");
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    };
    let v4 = read("sockstat")?;
    let v6 = read("sockstat6")?;
    Ok(field(&v4, "TCP:", "inuse") + field(&v4, "TCP:", "tw") + field(&v6, "TCP6:", "inuse"))
}

/// The number after `name` on the line starting with `line`, or 0.
fn field(text: &str, line: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            words.find(|w| *w == name)?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn reads_named_fields() {
        let text =
            "sockets: used 130\nTCP: inuse 5 orphan 0 tw 7 alloc 9 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(field(text, "TCP:", "inuse"), 5);
        assert_eq!(field(text, "TCP:", "tw"), 7);
        assert_eq!(field(text, "UDP:", "inuse"), 2);
        assert_eq!(field(text, "TCP6:", "inuse"), 0);
    }
}
