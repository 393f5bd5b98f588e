//! Directory grants: a grant may never expose the lion home (the log a
//! plugin is recorded in), and a recorded grant is used only while each
//! directory is still the one the operator named; a refusal is recorded as
//! a denial and says how to re-grant.

use std::path::Path;

use super::{CallOptions, PluginManager};
use crate::event::SystemEvent;
use crate::plugin::PluginError;
use crate::plugin::manifest::{DirAccess, DirPermission, Grant};
use crate::plugin::record::InstalledPlugin;
use crate::store::StoreError;

impl PluginManager {
    /// Refuses a call whose plugin's directories are no longer usable as
    /// granted, recording the denial.
    pub(super) async fn refuse_unusable_dirs(
        &self,
        installed: &InstalledPlugin,
    ) -> Result<(), PluginError> {
        match usable_dirs(installed, self.home()) {
            Ok(()) => Ok(()),
            Err((asked, reason)) => {
                self.record_denial(installed, asked, reason.clone()).await?;
                Err(PluginError::GrantRefused {
                    name: installed.name().to_owned(),
                    reason,
                })
            }
        }
    }

    /// Records that `installed` was refused `asked`, for `reason`, outside
    /// any call.
    pub(super) async fn record_denial(
        &self,
        installed: &InstalledPlugin,
        asked: String,
        reason: String,
    ) -> Result<(), StoreError> {
        self.record(
            vec![SystemEvent::PluginPermissionDenied {
                name: installed.name().to_owned(),
                call_id: None,
                asked,
                reason,
                install_id: installed.install_id,
            }],
            CallOptions::default(),
        )
        .await
    }

    /// Refuses a grant of a directory that holds the home, or lies in it:
    /// a plugin must never see or change the log it is recorded in.
    pub(super) fn check_dirs_keep_out_of_home(
        &self,
        name: &str,
        grant: &Grant,
    ) -> Result<(), PluginError> {
        for d in &grant.dirs {
            if let Some(reason) = overlaps_home(&d.path, self.home()) {
                return Err(PluginError::GrantRefused {
                    name: name.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The lion home this manager's files are in (the folder above them).
    pub(super) fn home(&self) -> Option<&Path> {
        self.inner.files.dir().parent()
    }
}

/// Checks that a plugin's directory grants can be used as recorded: their
/// host paths named by the operator (installs recorded before lion asked
/// for that must be re-granted), and each still the directory it was,
/// symbolic links resolved. On refusal: what was asked, and why.
pub(super) fn usable_dirs(
    installed: &InstalledPlugin,
    home: Option<&Path>,
) -> Result<(), (String, String)> {
    let dirs = &installed.grant.dirs;
    let describe = |d: &DirPermission| format!("directory {} = {}", d.guest, d.path.display());
    if !dirs.is_empty() && !installed.dirs_named {
        let asked: Vec<String> = dirs.iter().map(describe).collect();
        return Err((
            asked.join(", "),
            format!(
                "its directory grant ({}) was recorded before lion asked operators to name \
                 granted host paths; check the paths and re-grant them: {}",
                asked.join(", "),
                regrant_command(installed)
            ),
        ));
    }
    for d in dirs {
        if let Some(reason) = overlaps_home(&d.path, home) {
            return Err((describe(d), reason));
        }
        match d.path.canonicalize() {
            Ok(now) if now == d.path && now.is_dir() => {}
            Ok(now) => {
                return Err((
                    describe(d),
                    format!(
                        "the granted directory {} now resolves to {}; re-grant it: {}",
                        d.path.display(),
                        now.display(),
                        regrant_command(installed)
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    describe(d),
                    format!("the granted directory {}: {e}", d.path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Why granting `dir` would expose the lion `home` (the directory holds
/// the home or lies inside it), if it would.
fn overlaps_home(dir: &Path, home: Option<&Path>) -> Option<String> {
    let home = home?;
    let home = match home.canonicalize() {
        Ok(home) => home,
        // Fail closed: a grant is refused when the home it must keep out
        // of cannot be found.
        Err(e) => {
            return Some(format!(
                "the lion home {} cannot be resolved ({e}), so no directory can be checked \
                 against it",
                home.display()
            ));
        }
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    (home.starts_with(&dir) || dir.starts_with(&home)).then(|| {
        format!(
            "the directory {} {} the lion home {}: a plugin may not see the log it is \
             recorded in",
            dir.display(),
            if dir.starts_with(&home) {
                "lies inside"
            } else {
                "holds"
            },
            home.display()
        )
    })
}

/// The `lion plugin grant` command that grants a plugin what it holds now,
/// each directory's host path named.
fn regrant_command(installed: &InstalledPlugin) -> String {
    let grant = &installed.grant;
    let mut command = format!("lion plugin grant {}", installed.name());
    for d in &grant.dirs {
        let ro = if d.mode == DirAccess::ReadOnly {
            ":ro"
        } else {
            ""
        };
        command.push_str(&format!(
            " --grant dir:{}={}{ro}",
            d.guest,
            d.path.display()
        ));
    }
    for i in &grant.interfaces {
        command.push_str(&format!(" --grant interface:{}", i.as_str()));
    }
    for h in &grant.hosts {
        command.push_str(&format!(" --grant host:{h}"));
    }
    for v in &grant.env {
        command.push_str(&format!(" --grant env:{v}"));
    }
    command
}
