//! The Landlock ruleset of a jail, created in the parent: it handles every
//! filesystem right of the kernel's Landlock ABI (so anything not granted is
//! denied, reads and execution included), TCP bind/connect (ABI 4+; connect
//! granted only to the ports of lion's own listeners in the jail) and the abstract-unix-socket and signal scopes (ABI 6+). The
//! granted paths are opened here; the child only calls
//! `landlock_restrict_self` on the returned descriptor.
//!
//! Rules follow inodes, not names: the private `/tmp` is a bind mount of the
//! host directory granted here, so the rule matches it inside the jail.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};

/// Character devices every program may read and write: they hold no data of
/// anyone (`/dev/null`, entropy, zeros). Granted file rights only (no ioctl).
const HARMLESS_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// A Landlock ruleset could not be made as asked.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A granted path could not be opened.
    #[error("cannot open granted path {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        source: landlock::PathFdError,
    },
    /// The kernel refused the ruleset or a rule.
    #[error("Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// Listeners were asked for but the kernel's Landlock has no network
    /// rights (ABI < 4).
    #[error("Landlock ABI 4 (network rights) is needed to grant TCP ports")]
    NoNetworkRights,
    /// The kernel did not hand back a ruleset descriptor.
    #[error("Landlock ruleset: the kernel returned no ruleset descriptor")]
    NoDescriptor,
}

/// Builds the ruleset for the given grants and returns its descriptor.
pub(crate) fn build(
    kernel_abi: i32,
    read_only: &[PathBuf],
    read_write: &[&Path],
    connect_ports: &[u16],
) -> Result<OwnedFd, RulesError> {
    let abi = ABI::from(kernel_abi);
    let mut ruleset = Ruleset::default()
        // A kernel without Landlock (or with less than it claimed) must fail
        // here, never fall back to running unrestricted.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))?;
    if abi >= ABI::V4 {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    if abi >= ABI::V6 {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut created = ruleset.create()?;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    for path in read_only {
        created = created.add_rule(rule(path, read, abi)?)?;
    }
    for path in read_write {
        created = created.add_rule(rule(path, all, abi)?)?;
    }
    if abi >= ABI::V4 {
        for port in connect_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
    } else if !connect_ports.is_empty() {
        // Without Landlock's network rights the empty namespace still holds,
        // but the ports could not be singled out: refuse rather than widen.
        return Err(RulesError::NoNetworkRights);
    }
    let device_rights = AccessFs::ReadFile | AccessFs::WriteFile;
    for dev in HARMLESS_DEVICES {
        if Path::new(dev).exists() {
            created = created.add_rule(rule(Path::new(dev), device_rights, abi)?)?;
        }
    }
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or(RulesError::NoDescriptor)
}

/// A rule for one path; a file (not a directory) gets only the rights that
/// apply to files, or the kernel would refuse the rule.
fn rule(
    path: &Path,
    rights: BitFlags<AccessFs>,
    abi: ABI,
) -> Result<PathBeneath<PathFd>, RulesError> {
    let fd = PathFd::new(path).map_err(|source| RulesError::Path {
        path: path.to_owned(),
        source,
    })?;
    let rights = if path.is_dir() {
        rights
    } else {
        rights & AccessFs::from_file(abi)
    };
    Ok(PathBeneath::new(fd, rights))
}
