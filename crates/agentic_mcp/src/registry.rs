//! Installing MCP servers from the package registries, pinned and hashed.
//!
//! `lion plugin install npm:@scope/name@1.2.3` or `pypi:name==1.2.3` lands
//! here. Installing runs other people's code, so:
//!
//! - **Exact versions only** ([`PackageSpec`]): no ranges, tags, URLs, paths,
//!   extras or markers.
//! - **No package scripts**: npm runs with `--ignore-scripts`; pip installs
//!   wheels only (`--only-binary=:all:`), so no `setup.py` runs.
//! - **Locked**: npm's `package-lock.json` (with each tarball's integrity
//!   hash) and a pip requirements lock with `--hash=sha256:` for every
//!   distribution (resolved with `pip install --dry-run --report`, then
//!   installed with `--require-hashes --no-deps` from that file) are kept in
//!   the installed folder.
//! - **Hashed**: the whole installed tree is hashed ([`tree`]) and the hash
//!   re-checked at load by [`verify`]: one changed byte, an added or removed
//!   file, a changed symlink refuses the load, naming the path.
//! - **Atomic**: everything is installed into a temporary sibling of the
//!   destination and renamed into place only when it all worked; a failure
//!   leaves the destination as it was (absent).
//! - **No shims**: the command is the real `node` (PATH and symlinks
//!   resolved) with the package's `bin` script, or the venv's interpreter with
//!   the console-script entry point imported directly (`python -I -B -c
//!   "import sys; from mod import func; sys.exit(func())"`), not the generated
//!   `bin/` shim whose shebang would point at the temporary folder.
//!
//! The layout of an installed folder `DEST`:
//!
//! ```text
//! DEST/lion-package.json   how to run it (command, args, paths): hashed with the tree
//! DEST/lion-tree.json      the tree's manifest (per-entry digests), the only name not hashed
//! npm:  DEST/package.json, DEST/package-lock.json, DEST/node_modules/…
//! pypi: DEST/requirements.lock, DEST/pip-report.json, DEST/venv/…
//! ```
//!
//! Transitive dependencies are whatever the registry resolved at install time
//! (npm and pip have no way to pin a package's dependencies for it); from then
//! on the lock and the tree hash fix them.

mod npm;
mod pypi;
mod spec;
pub mod tree;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use spec::{PackageSpec, SpecError};
pub use tree::{Change, TreeError, TreeManifest, tree_hash};

/// The manifest's file name inside the installed folder: the per-entry
/// digests that let [`verify`] name the first changed path. The only
/// top-level name the tree hash leaves out (its own digest is the tree hash,
/// so it cannot be edited to match a tampered tree).
pub const MANIFEST_FILE: &str = "lion-tree.json";
/// How to run the server (the [`InstalledPackage`] without its hash), kept
/// INSIDE the hashed tree: what [`verify`] returns cannot be edited either.
pub const PACKAGE_FILE: &str = "lion-package.json";
/// How long one npm or pip step may run: a cold install of a real server
/// takes seconds; a hung registry connection must not hang `lion plugin
/// install` forever.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How many lines of a failed tool's stderr go into the error: enough for
/// npm's or pip's reason, short enough for one event.
const STDERR_TAIL_LINES: usize = 6;
/// The cap on one tail line, so a minified stack trace stays readable.
const STDERR_LINE_MAX: usize = 300;

/// How to install; [`InstallOptions::default`] uses this process's `PATH`,
/// the tools' own caches and [`DEFAULT_STEP_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The `PATH` searched for `npm`, `node` and `python3`, and given to them.
    /// `None`: this process's `PATH`.
    pub path: Option<OsString>,
    /// A download cache shared between installs (npm's `--cache`, pip's
    /// `--cache-dir`, under `npm/` and `pip/`). `None`: the tools' defaults.
    pub cache_dir: Option<PathBuf>,
    /// The deadline for each npm or pip step.
    pub step_timeout: Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            path: None,
            cache_dir: None,
            step_timeout: DEFAULT_STEP_TIMEOUT,
        }
    }
}

/// What an install produced: how to start the server and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstalledPackage {
    /// The spec installed.
    pub spec: PackageSpec,
    /// The installed folder (the `dest_dir` given to [`install`]).
    pub dir: PathBuf,
    /// The program to run: the real `node`, or the venv's `bin/python`
    /// (a symlink to the real interpreter that makes it use the venv).
    pub command: PathBuf,
    /// Its arguments: the entry script, or `-I -B -c <entry point>`.
    pub args: Vec<String>,
    /// What the server must be able to read (and nothing it must write): the
    /// installed folder, the interpreter's real path, its standard library and
    /// shared library. System libraries (`/lib`, `/usr/lib`, the loader) are
    /// the sandbox's own business.
    pub read_only_paths: Vec<PathBuf>,
    /// The lock file recorded at install (`package-lock.json` or
    /// `requirements.lock`).
    pub lock_file: PathBuf,
    /// The tree hash of `dir` (everything but [`MANIFEST_FILE`], including
    /// [`PACKAGE_FILE`]), lowercase hex.
    pub tree_hash: String,
}

/// Why an install or a load failed. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A runtime or tool the registry needs is not on `PATH`.
    #[error("`{program}` is not on PATH: {registry} packages need {needs}")]
    MissingRuntime {
        /// The missing program (`npm`, `node`, `python3`).
        program: &'static str,
        /// `npm:` or `pypi:`.
        registry: &'static str,
        /// What to install.
        needs: &'static str,
    },
    /// The destination already exists: an install never overwrites.
    #[error("{0} already exists: remove the old install first")]
    DestExists(PathBuf),
    /// The destination has no parent folder or a name that cannot be used.
    #[error("{0}: not a usable install destination (needs an existing parent folder and a name)")]
    BadDest(PathBuf),
    /// A step (npm, pip, venv) exited with an error.
    #[error("{step} failed ({status}): {stderr_tail}")]
    Tool {
        /// Which step, e.g. `npm install`.
        step: &'static str,
        /// The exit status.
        status: String,
        /// The last lines of its stderr (or stdout when stderr is empty),
        /// joined with ` | `.
        stderr_tail: String,
    },
    /// A step ran past its deadline and was killed.
    #[error("{step} timed out after {after:?}")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The installed package is not a usable server (no entry point, several
    /// candidates, an entry point lion cannot run safely…).
    #[error("{spec}: {why}")]
    Package {
        /// The spec being installed.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The tree could not be hashed, or changed since install.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The manifest or package file is missing, unreadable or does not
    /// match the tree hash recorded at install.
    #[error("install record {path}: {why}")]
    Record {
        /// The file's path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

pub(crate) fn io_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> InstallError + use<> {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// Installs `spec` into `dest_dir`, which must not exist yet (its parent
/// must). On success the folder holds the package, its lock,
/// [`PACKAGE_FILE`] and [`MANIFEST_FILE`]; on failure nothing is left at `dest_dir` and the
/// temporary sibling is removed.
pub async fn install(
    spec: &PackageSpec,
    dest_dir: &Path,
    opts: &InstallOptions,
) -> Result<InstalledPackage, InstallError> {
    let dest = absolute(dest_dir)?;
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(InstallError::BadDest(dest));
    };
    if dest.symlink_metadata().is_ok() {
        return Err(InstallError::DestExists(dest));
    }
    if !parent.is_dir() {
        return Err(InstallError::BadDest(dest));
    }
    let env = ToolEnv::new(opts);
    // Check the runtimes before touching the disk.
    match spec {
        PackageSpec::Npm { .. } => {
            env.require("npm", "npm:", "Node.js (node and npm)")?;
            env.require("node", "npm:", "Node.js (node and npm)")?;
        }
        PackageSpec::Pypi { .. } => {
            env.require("python3", "pypi:", "Python 3 with its venv module")?;
        }
    }
    let tmp = TempSibling::create(parent, name)?;
    let package = match spec {
        PackageSpec::Npm { name, version } => {
            npm::install(spec, name, version, tmp.path(), &dest, &env).await?
        }
        PackageSpec::Pypi { name, version } => {
            pypi::install(spec, name, version, tmp.path(), &dest, &env).await?
        }
    };
    let package_path = tmp.path().join(PACKAGE_FILE);
    write_json(&package_path, &package)?;
    let tmp_path = tmp.path().to_owned();
    let manifest =
        tokio::task::spawn_blocking(move || TreeManifest::scan(&tmp_path, &[MANIFEST_FILE]))
            .await
            .map_err(|e| InstallError::Io {
                what: "hashing",
                path: dest.clone(),
                source: io::Error::other(e),
            })??;
    write_json(&tmp.path().join(MANIFEST_FILE), &manifest)?;
    tmp.rename_to(&dest)?;
    Ok(InstalledPackage {
        tree_hash: manifest.digest(),
        ..package
    })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), InstallError> {
    let json =
        serde_json::to_vec(value).map_err(|e| io_error("writing", path)(io::Error::other(e)))?;
    std::fs::write(path, json).map_err(io_error("writing", path))
}

fn record_error(path: &Path, why: impl std::fmt::Display) -> InstallError {
    InstallError::Record {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// Re-checks an installed folder at load, against `expected_tree_hash` (the
/// hash lion recorded at install, from its own log): the folder's manifest
/// must digest to it, then the folder is re-hashed against the manifest (a
/// difference names the first changed path), then the package file (part of
/// the tree) is read and checked against its manifest digest. Returns the
/// package as installed. Synchronous: it reads every file of the tree
/// (tens of milliseconds for a real server).
pub fn verify(dest_dir: &Path, expected_tree_hash: &str) -> Result<InstalledPackage, InstallError> {
    let dest_dir = &absolute(dest_dir)?;
    let manifest_path = dest_dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).map_err(|e| record_error(&manifest_path, e))?;
    let manifest: TreeManifest =
        serde_json::from_slice(&bytes).map_err(|e| record_error(&manifest_path, e))?;
    let recorded = manifest.digest();
    if recorded != expected_tree_hash {
        return Err(record_error(
            &manifest_path,
            format_args!(
                "tree hash {recorded} is not the one recorded at install ({expected_tree_hash})"
            ),
        ));
    }
    manifest.verify(dest_dir, &[MANIFEST_FILE])?;
    // Read the package file once and check those very bytes (the tree could
    // change between the walk and this read).
    let package_path = dest_dir.join(PACKAGE_FILE);
    let bytes = std::fs::read(&package_path).map_err(|e| record_error(&package_path, e))?;
    let listed = manifest
        .entries
        .iter()
        .find(|e| e.path == PACKAGE_FILE)
        .map(|e| &e.kind);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !matches!(listed, Some(tree::EntryKind::File { sha256, .. }) if *sha256 == digest) {
        return Err(record_error(
            &package_path,
            "not the package file hashed at install",
        ));
    }
    let package: InstalledPackage =
        serde_json::from_slice(&bytes).map_err(|e| record_error(&package_path, e))?;
    if package.dir != *dest_dir {
        return Err(record_error(
            &package_path,
            format_args!(
                "installed at {}, found at {}: reinstall after moving",
                package.dir.display(),
                dest_dir.display()
            ),
        ));
    }
    Ok(InstalledPackage {
        tree_hash: recorded,
        ..package
    })
}

fn absolute(p: &Path) -> Result<PathBuf, InstallError> {
    std::path::absolute(p).map_err(io_error("resolving", p))
}

/// The environment the tools run in: `PATH` and the caches.
pub(crate) struct ToolEnv {
    path: OsString,
    cache_dir: Option<PathBuf>,
    timeout: Duration,
}

impl ToolEnv {
    fn new(opts: &InstallOptions) -> Self {
        let path = opts
            .path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        Self {
            path,
            cache_dir: opts.cache_dir.clone(),
            timeout: opts.step_timeout,
        }
    }

    /// `program` found on `PATH`, with symlinks resolved.
    pub(crate) fn which(&self, program: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.path)
            .filter(|d| d.is_absolute())
            .find_map(|d| {
                let candidate = d.join(program);
                let meta = std::fs::metadata(&candidate).ok()?;
                use std::os::unix::fs::PermissionsExt;
                (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
            })
    }

    fn require(
        &self,
        program: &'static str,
        registry: &'static str,
        needs: &'static str,
    ) -> Result<PathBuf, InstallError> {
        self.which(program).ok_or(InstallError::MissingRuntime {
            program,
            registry,
            needs,
        })
    }

    /// The cache folder for one tool, created if needed.
    pub(crate) fn cache(&self, tool: &str) -> Result<Option<PathBuf>, InstallError> {
        let Some(base) = &self.cache_dir else {
            return Ok(None);
        };
        let dir = base.join(tool);
        std::fs::create_dir_all(&dir).map_err(io_error("creating cache", &dir))?;
        Ok(Some(dir))
    }

    /// Runs `program args` to completion under the step deadline, with
    /// `PATH` set; returns stdout. A non-zero exit becomes
    /// [`InstallError::Tool`] with the tail of stderr.
    pub(crate) async fn run(
        &self,
        step: &'static str,
        program: &Path,
        args: &[&OsStr],
        cwd: &Path,
    ) -> Result<Vec<u8>, InstallError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(io_error("starting", program))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out.map_err(io_error("running", program))?,
            Err(_) => {
                return Err(InstallError::Timeout {
                    step,
                    after: self.timeout,
                });
            }
        };
        if !out.status.success() {
            let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &out.stderr
            } else {
                &out.stdout
            };
            return Err(InstallError::Tool {
                step,
                status: out.status.to_string(),
                stderr_tail: tail(text),
            });
        }
        Ok(out.stdout)
    }
}

/// The last [`STDERR_TAIL_LINES`] non-empty lines of `text`, each capped,
/// joined with ` | ` so the error stays one line.
fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| match l.char_indices().nth(STDERR_LINE_MAX) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => (*l).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A temporary sibling of the destination, removed on drop unless renamed
/// into place.
struct TempSibling {
    path: PathBuf,
    armed: bool,
}

impl TempSibling {
    fn create(parent: &Path, name: &OsStr) -> Result<Self, InstallError> {
        // Unique per process and per install, so two installs never share one.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let mut tmp_name = OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(
                ".installing-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let path = parent.join(tmp_name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path, armed: true }),
                // A leftover of a crashed install with the same pid: pick another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("creating", &path)(e)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames into place, refusing (atomically) to replace anything that
    /// appeared at `dest` meanwhile.
    fn rename_to(mut self, dest: &Path) -> Result<(), InstallError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, &self.path, CWD, dest, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Err(InstallError::DestExists(dest.to_owned())),
            Err(e) => return Err(io_error("renaming into place", dest)(e.into())),
        }
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempSibling {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_never_replaces_a_folder_that_appeared_meanwhile() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("pkg");
        let tmp = TempSibling::create(parent.path(), OsStr::new("pkg")).unwrap();
        std::fs::write(tmp.path().join("new"), b"new").unwrap();
        let second = TempSibling::create(parent.path(), OsStr::new("pkg")).unwrap();
        assert_ne!(
            tmp.path(),
            second.path(),
            "two installs never share a temp folder"
        );
        drop(second);
        // An empty folder appears at the destination (a plain rename(2) would replace it).
        std::fs::create_dir(&dest).unwrap();
        let e = tmp.rename_to(&dest).unwrap_err();
        assert!(matches!(e, InstallError::DestExists(_)), "{e}");
        let left: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![OsString::from("pkg")],
            "the temp folder is removed, the destination untouched"
        );
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[test]
    fn tail_keeps_the_last_lines_on_one_line() {
        let t = tail(b"a\n\nb\nc\nd\ne\nf\ng\n  \n");
        assert_eq!(t, "b | c | d | e | f | g");
        let long = "x".repeat(STDERR_LINE_MAX + 10);
        assert_eq!(tail(long.as_bytes()).chars().count(), STDERR_LINE_MAX + 1);
    }
}
