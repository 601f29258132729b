//! Where the fields the tracing program reads sit in the running kernel's `struct sock` and
//! `struct net`, found in its BTF at start-up: these offsets move with the kernel's version and
//! configuration, so they are never compiled in.
use anyhow::{Context as _, Result, bail};
use btf_rs::{Btf, Type};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets the eBPF programs are loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `sock.__sk_common.skc_net.net`: the socket's `struct net *`.
    pub sock_net: u64,
    /// `net.net_cookie`: the namespace's cookie, as SO_NETNS_COOKIE reports it.
    pub net_cookie: u64,
    /// `inet_sock.inet_sport`: the local port, kept after the socket releases it at TCP_CLOSE.
    pub inet_sport: u64,
}

impl KernelLayout {
    pub fn of_running_kernel() -> Result<Self> {
        let btf = Btf::from_file(VMLINUX_BTF).with_context(|| {
            format!(
                "reading the kernel's BTF at {VMLINUX_BTF}: drainer needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF (Linux >= 5.5; all major distributions enable it)"
            )
        })?;
        Ok(Self {
            sock_net: field_offset(&btf, "sock", &["__sk_common", "skc_net", "net"], 8)?,
            net_cookie: field_offset(&btf, "net", &["net_cookie"], 8)?,
            inet_sport: field_offset(&btf, "inet_sock", &["inet_sport"], 2)?,
        })
    }
}

/// The byte offset of `path` inside `struct outer`, checking the field is `size` bytes and not a
/// bit field. Anonymous structs and unions on the way are looked through, as C does.
fn field_offset(btf: &Btf, outer: &str, path: &[&str], size: usize) -> Result<u64> {
    let what = || format!("struct {outer}.{}", path.join("."));
    let mut current = btf
        .resolve_types_by_name(outer)
        .ok()
        .and_then(|types| types.into_iter().find(|t| matches!(t, Type::Struct(_))))
        .with_context(|| format!("the kernel's BTF has no struct {outer}"))?;
    let mut bits = 0u64;
    for name in path {
        let (offset, member) = member(btf, &current, name)?.with_context(|| {
            format!(
                "the kernel's BTF has no {}: this kernel is too old or too unusual for drainer \
                 (Linux >= 5.15 needed)",
                what()
            )
        })?;
        bits += offset;
        current = member;
    }
    let found = byte_size(&current);
    if !bits.is_multiple_of(8) || found != Some(size) {
        bail!(
            "{} has an unexpected layout in this kernel ({} bytes at bit {bits}, {size} expected)",
            what(),
            found.map_or("?".into(), |s| s.to_string()),
        );
    }
    Ok(bits / 8)
}

/// The bit offset and (typedef-resolved) type of member `name` of a struct or union.
fn member(btf: &Btf, container: &Type, name: &str) -> Result<Option<(u64, Type)>> {
    let (Type::Struct(s) | Type::Union(s)) = container else {
        return Ok(None);
    };
    for m in &s.members {
        if m.bitfield_size().is_some_and(|size| size != 0) {
            continue;
        }
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let member_type = resolved(btf, btf.resolve_chained_type(m)?)?;
        if member_name == name {
            return Ok(Some((u64::from(m.bit_offset()), member_type)));
        }
        if member_name.is_empty()
            && let Some((offset, found)) = member(btf, &member_type, name)?
        {
            return Ok(Some((u64::from(m.bit_offset()) + offset, found)));
        }
    }
    Ok(None)
}

/// The type behind typedefs and qualifiers.
fn resolved(btf: &Btf, mut t: Type) -> Result<Type> {
    loop {
        t = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x)?,
            Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                btf.resolve_chained_type(x)?
            }
            Type::TypeTag(x) => btf.resolve_chained_type(x)?,
            _ => return Ok(t),
        };
    }
}

fn byte_size(t: &Type) -> Option<usize> {
    match t {
        Type::Int(i) => Some(i.size()),
        Type::Ptr(_) => Some(size_of::<usize>()),
        Type::Struct(s) | Type::Union(s) => Some(s.size()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::KernelLayout;

    /// The running kernel's layout is found, and the stable parts sit where they always have.
    #[test]
    fn reads_the_running_kernels_layout() {
        let layout = KernelLayout::of_running_kernel().unwrap();
        assert_eq!(layout.sock_net % 8, 0);
        assert!(
            layout.sock_net >= 16,
            "skc_net follows the addresses and ports"
        );
    }
}
