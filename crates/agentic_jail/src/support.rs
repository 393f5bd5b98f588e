//! The probe: does this kernel (and this process's own restrictions) offer
//! what a jail needs — user namespaces, Landlock, seccomp? [`support()`]
//! answers with what is there or, in one line, what is missing. [`crate::spawn`]
//! refuses to start anything when something is missing; there is no way to
//! run a program "unsandboxed" through this crate.

use std::fmt;

use crate::child;

/// What the kernel offers a jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The Landlock ABI version the kernel reports (1 = Linux 5.13; 7 = 6.15).
    pub landlock_abi: i32,
}

/// A feature a jail needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFeature {
    /// Unprivileged user namespaces (with mount, pid, ipc, uts, network).
    UserNamespaces,
    /// Landlock filesystem access control.
    Landlock,
    /// Seccomp BPF filters.
    Seccomp,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UserNamespaces => "user namespaces",
            Self::Landlock => "Landlock",
            Self::Seccomp => "seccomp",
        })
    }
}

/// What is missing, with the kernel's answer for each. Its `Display` is ONE
/// line naming every missing feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Each missing feature and why (the errno the probe got).
    pub features: Vec<(MissingFeature, String)>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OS sandbox unavailable, refusing to run the program: missing ")?;
        for (i, (feature, why)) in self.features.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{feature} ({why})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Missing {}

/// [`support()`], probed once per process: later calls answer what the
/// first one found. It is the answer [`spawn`](crate::spawn) relies on, so
/// a caller checking before it spawns costs no second probe.
pub fn support_once() -> Result<Support, Missing> {
    static SUPPORT: std::sync::OnceLock<Result<Support, Missing>> = std::sync::OnceLock::new();
    SUPPORT.get_or_init(support).clone()
}

/// Probes user namespaces (an `unshare` of every namespace a jail uses, in a
/// throwaway child), the Landlock ABI and seccomp. Costs one `fork`.
pub fn support() -> Result<Support, Missing> {
    let mut features = Vec::new();
    if let Err(e) = child::probe_namespaces() {
        features.push((MissingFeature::UserNamespaces, format!("unshare: {e}")));
    }
    let abi = match child::landlock_abi() {
        Ok(abi) if abi >= 1 => abi,
        Ok(abi) => {
            features.push((MissingFeature::Landlock, format!("ABI {abi}")));
            0
        }
        Err(e) => {
            features.push((
                MissingFeature::Landlock,
                format!("landlock_create_ruleset: {e}"),
            ));
            0
        }
    };
    if let Err(e) = child::probe_seccomp() {
        features.push((MissingFeature::Seccomp, format!("seccomp: {e}")));
    }
    if features.is_empty() {
        Ok(Support { landlock_abi: abi })
    } else {
        Err(Missing { features })
    }
}
