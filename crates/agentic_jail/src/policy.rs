//! The seccomp policy: `policy/seccomp.json` (seccompiler's JSON format, a
//! comment on each unusual syscall) compiled to BPF in the parent. Three
//! filters are installed; the kernel applies the strictest answer:
//!
//! - `allowlist`: kill the process for any syscall not listed; allow the
//!   listed ones (what Node 20 and Python 3.11 need, plus the probed ones);
//! - `probe_enosys`: allow everything except what runtimes only probe
//!   (`io_uring_*`, `clone3`, `pidfd_*`…), answered `ENOSYS` so they fall back;
//! - `socket_families`: `EAFNOSUPPORT` for sockets of any family but IPv4,
//!   IPv6 and netlink (unix sockets would reach socket files outside the
//!   grants, which Landlock ABI 7 does not govern; vsock is not namespaced).

use seccompiler::{BpfProgram, TargetArch};

/// The policy, kept as data in the repository.
pub(crate) const POLICY_JSON: &str = include_str!("../policy/seccomp.json");
/// Name of the kill-by-default allow-list filter in the policy.
pub(crate) const ALLOWLIST: &str = "allowlist";
/// Name of the allow-by-default `ENOSYS` filter in the policy.
pub(crate) const PROBE_ENOSYS: &str = "probe_enosys";
/// Name of the allow-by-default socket-family filter in the policy.
pub(crate) const SOCKET_FAMILIES: &str = "socket_families";

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("agentic_jail's seccomp policy is written for x86_64 and aarch64 only");

/// The three compiled filters, in the order they are installed.
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    /// Installed first: `ENOSYS` for probed syscalls.
    pub probe_enosys: BpfProgram,
    /// Installed second: `EAFNOSUPPORT` for unwanted socket families.
    pub socket_families: BpfProgram,
    /// Installed last: the allow-list, kill for the rest.
    pub allowlist: BpfProgram,
}

/// Compiles the policy for this machine's architecture.
pub(crate) fn compile() -> Result<Filters, String> {
    let mut map = seccompiler::compile_from_json(POLICY_JSON.as_bytes(), ARCH)
        .map_err(|e| format!("policy/seccomp.json does not compile: {e}"))?;
    let mut take = |name: &str| {
        map.remove(name)
            .ok_or_else(|| format!("policy/seccomp.json has no filter named {name}"))
    };
    let allowlist = take(ALLOWLIST)?;
    let probe_enosys = take(PROBE_ENOSYS)?;
    let socket_families = take(SOCKET_FAMILIES)?;
    if let Some(extra) = map.keys().next() {
        return Err(format!(
            "policy/seccomp.json has a filter {extra} lion does not install"
        ));
    }
    Ok(Filters {
        probe_enosys,
        socket_families,
        allowlist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_to_three_filters() {
        let f = compile().expect("policy compiles");
        assert!(
            !f.allowlist.is_empty() && !f.probe_enosys.is_empty() && !f.socket_families.is_empty()
        );
    }

    /// A syscall answered ENOSYS must also be allowed by the allow-list, or
    /// the allow-list's kill would win over the ENOSYS answer.
    #[test]
    fn every_enosys_syscall_is_in_the_allowlist() {
        let v: serde_json::Value = serde_json::from_str(POLICY_JSON).unwrap();
        let names = |filter: &str| -> Vec<String> {
            v[filter]["filter"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["syscall"].as_str().unwrap().to_owned())
                .collect()
        };
        let allowed = names(ALLOWLIST);
        for s in names(PROBE_ENOSYS)
            .into_iter()
            .chain(names(SOCKET_FAMILIES))
        {
            assert!(
                allowed.contains(&s),
                "{s} is ENOSYS but not in the allow-list"
            );
        }
        for dangerous in [
            "ptrace",
            "bpf",
            "keyctl",
            "mount",
            "unshare",
            "setns",
            "kexec_load",
        ] {
            assert!(
                !allowed.contains(&dangerous.to_owned()),
                "{dangerous} allowed"
            );
        }
    }
}
