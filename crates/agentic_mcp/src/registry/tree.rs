//! The tree hash: a deterministic SHA-256 over an installed package's folder,
//! recorded at install and re-checked at load.
//!
//! The tree is walked without following symlinks. Each entry is its path
//! relative to the root (UTF-8, `/`-separated), its type, and for a file its
//! executable bit and the SHA-256 of its contents, for a symlink its target
//! (as written, not resolved). Entries are sorted by path bytes, and the tree
//! hash is SHA-256 over a length-prefixed encoding of that list under a version
//! tag. Modification times, owners and other permission bits are left out, so
//! the same install hashes the same on any machine and after a copy.
//!
//! A [`TreeManifest`] keeps the per-entry digests so that [`TreeManifest::verify`]
//! can name the first path that differs, not only say that something did.
//! Anything else than a directory, a regular file or a symlink (a FIFO, a
//! socket, a device) has no place in an installed package and is refused.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The tag that opens the hashed encoding; bump it when the encoding changes
/// so an old recorded hash can never match a new encoding by accident.
const TREE_HASH_TAG: &[u8] = b"lion-tree-v1\0";
/// The read buffer when hashing file contents.
const READ_CHUNK: usize = 64 * 1024;
/// A cap on the entries of one installed tree: a real MCP server's tree has a
/// few thousand; a tree beyond this is refused rather than hashed for minutes.
pub const MAX_TREE_ENTRIES: usize = 200_000;

/// Why a tree could not be hashed, or differs from what was recorded.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Reading the tree failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An entry that is neither a directory, a regular file nor a symlink.
    #[error("{path}: a {kind} has no place in an installed package")]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What it is (FIFO, socket, device).
        kind: &'static str,
    },
    /// A file name that is not UTF-8 (the manifest records paths as text).
    #[error("{0}: file name is not UTF-8")]
    NotUtf8(PathBuf),
    /// More entries than [`MAX_TREE_ENTRIES`].
    #[error("{root}: more than {MAX_TREE_ENTRIES} entries")]
    TooLarge {
        /// The tree's root.
        root: PathBuf,
    },
    /// The tree differs from the recorded one.
    #[error("installed tree {root} changed since install: {path}: {change}")]
    Changed {
        /// The tree's root.
        root: PathBuf,
        /// The first differing path, relative to the root.
        path: String,
        /// How it differs.
        change: Change,
    },
}

/// How an entry differs from the recorded tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Present now, absent at install.
    Added,
    /// Present at install, absent now.
    Removed,
    /// A file's contents differ.
    Contents,
    /// A file's executable bit differs.
    Executable,
    /// A symlink points elsewhere.
    SymlinkTarget,
    /// The entry changed type (file, directory, symlink).
    Kind,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Contents => "contents changed",
            Self::Executable => "executable bit changed",
            Self::SymlinkTarget => "symlink target changed",
            Self::Kind => "file type changed",
        })
    }
}

/// One entry of an installed tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory (recorded so that empty ones count).
    Dir,
    /// A regular file.
    File {
        /// Whether any execute bit is set.
        exec: bool,
        /// SHA-256 of the contents, lowercase hex.
        sha256: String,
    },
    /// A symbolic link, not followed.
    Symlink {
        /// The target as written in the link.
        target: String,
    },
}

/// One path of the tree and what is there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeEntry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    /// What the path is.
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// Every entry of a tree, sorted by path: what [`tree_hash`] digests, kept so
/// [`TreeManifest::verify`] can name the first difference.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TreeManifest {
    /// The entries, sorted by path bytes.
    pub entries: Vec<TreeEntry>,
}

impl TreeManifest {
    /// Walks `root` (not following symlinks), leaving out the top-level names
    /// in `exclude` (e.g. the install record kept beside the tree).
    pub fn scan(root: &Path, exclude: &[&str]) -> Result<Self, TreeError> {
        let mut entries = Vec::new();
        walk(root, root, "", exclude, &mut entries)?;
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(Self { entries })
    }

    /// The tree hash, lowercase hex SHA-256 of the encoded entries.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(TREE_HASH_TAG);
        for e in &self.entries {
            let put = |h: &mut Sha256, bytes: &[u8]| {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            };
            match &e.kind {
                EntryKind::Dir => {
                    h.update(b"d");
                    put(&mut h, e.path.as_bytes());
                }
                EntryKind::File { exec, sha256 } => {
                    h.update(b"f");
                    put(&mut h, e.path.as_bytes());
                    h.update([u8::from(*exec)]);
                    put(&mut h, sha256.as_bytes());
                }
                EntryKind::Symlink { target } => {
                    h.update(b"l");
                    put(&mut h, e.path.as_bytes());
                    put(&mut h, target.as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// Re-scans `root` and compares it with this manifest: `Ok` when equal,
    /// else [`TreeError::Changed`] naming the first differing path in path
    /// order.
    pub fn verify(&self, root: &Path, exclude: &[&str]) -> Result<(), TreeError> {
        let now = Self::scan(root, exclude)?;
        match first_difference(&self.entries, &now.entries) {
            None => Ok(()),
            Some((path, change)) => Err(TreeError::Changed {
                root: root.to_owned(),
                path,
                change,
            }),
        }
    }
}

/// The tree hash of `root` (see the module docs).
pub fn tree_hash(root: &Path, exclude: &[&str]) -> Result<String, TreeError> {
    Ok(TreeManifest::scan(root, exclude)?.digest())
}

/// The first difference between two sorted entry lists.
fn first_difference(old: &[TreeEntry], new: &[TreeEntry]) -> Option<(String, Change)> {
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (None, None) => return None,
            (Some(o), None) => return Some((o.path.clone(), Change::Removed)),
            (None, Some(n)) => return Some((n.path.clone(), Change::Added)),
            (Some(o), Some(n)) => match o.path.as_bytes().cmp(n.path.as_bytes()) {
                std::cmp::Ordering::Less => return Some((o.path.clone(), Change::Removed)),
                std::cmp::Ordering::Greater => return Some((n.path.clone(), Change::Added)),
                std::cmp::Ordering::Equal => {
                    let change = match (&o.kind, &n.kind) {
                        (EntryKind::Dir, EntryKind::Dir) => None,
                        (
                            EntryKind::File {
                                exec: e1,
                                sha256: s1,
                            },
                            EntryKind::File {
                                exec: e2,
                                sha256: s2,
                            },
                        ) => {
                            if s1 != s2 {
                                Some(Change::Contents)
                            } else if e1 != e2 {
                                Some(Change::Executable)
                            } else {
                                None
                            }
                        }
                        (EntryKind::Symlink { target: t1 }, EntryKind::Symlink { target: t2 }) => {
                            (t1 != t2).then_some(Change::SymlinkTarget)
                        }
                        _ => Some(Change::Kind),
                    };
                    if let Some(change) = change {
                        return Some((o.path.clone(), change));
                    }
                    i += 1;
                    j += 1;
                }
            },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    rel: &str,
    exclude: &[&str],
    out: &mut Vec<TreeEntry>,
) -> Result<(), TreeError> {
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let path = item.path();
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            return Err(TreeError::NotUtf8(path));
        };
        if rel.is_empty() && exclude.contains(&name) {
            continue;
        }
        if out.len() >= MAX_TREE_ENTRIES {
            return Err(TreeError::TooLarge {
                root: root.to_owned(),
            });
        }
        let rel_path = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(TreeEntry {
                path: rel_path.clone(),
                kind: EntryKind::Dir,
            });
            walk(root, &path, &rel_path, exclude, out)?;
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            let sha256 = hash_file(&path)?;
            out.push(TreeEntry {
                path: rel_path,
                kind: EntryKind::File { exec, sha256 },
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let Some(target) = target.to_str() else {
                return Err(TreeError::NotUtf8(path));
            };
            out.push(TreeEntry {
                path: rel_path,
                kind: EntryKind::Symlink {
                    target: target.to_owned(),
                },
            });
        } else {
            let kind = if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device"
            };
            return Err(TreeError::Unsupported { path, kind });
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String, TreeError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn sample() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/empty")).unwrap();
        fs::write(d.path().join("a/one.txt"), b"one").unwrap();
        fs::write(d.path().join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a/one.txt", d.path().join("link")).unwrap();
        d
    }

    fn changed(d: &Path, m: &TreeManifest) -> (String, Change) {
        match m.verify(d, &[]) {
            Err(TreeError::Changed { path, change, .. }) => (path, change),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn hash_is_stable_and_ignores_mtimes_and_excluded_names() {
        let d = sample();
        let h1 = tree_hash(d.path(), &[]).unwrap();
        assert_eq!(h1.len(), 64);
        // Rewriting the same bytes (new mtime) changes nothing.
        fs::write(d.path().join("a/one.txt"), b"one").unwrap();
        assert_eq!(tree_hash(d.path(), &[]).unwrap(), h1);
        // An excluded top-level name is not part of the tree.
        fs::write(d.path().join("record.json"), b"{}").unwrap();
        assert_eq!(tree_hash(d.path(), &["record.json"]).unwrap(), h1);
        assert_ne!(tree_hash(d.path(), &[]).unwrap(), h1);
    }

    #[test]
    fn verify_names_each_kind_of_change() {
        let d = sample();
        let m = TreeManifest::scan(d.path(), &[]).unwrap();
        m.verify(d.path(), &[]).unwrap();

        fs::write(d.path().join("a/one.txt"), b"onE").unwrap();
        assert_eq!(
            changed(d.path(), &m),
            ("a/one.txt".into(), Change::Contents)
        );
        fs::write(d.path().join("a/one.txt"), b"one").unwrap();

        fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(changed(d.path(), &m), ("run.sh".into(), Change::Executable));
        fs::set_permissions(d.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();

        fs::remove_file(d.path().join("link")).unwrap();
        symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(
            changed(d.path(), &m),
            ("link".into(), Change::SymlinkTarget)
        );
        fs::remove_file(d.path().join("link")).unwrap();
        assert_eq!(changed(d.path(), &m), ("link".into(), Change::Removed));
        symlink("a/one.txt", d.path().join("link")).unwrap();

        fs::write(d.path().join("a/empty/new.py"), b"").unwrap();
        assert_eq!(
            changed(d.path(), &m),
            ("a/empty/new.py".into(), Change::Added)
        );
        fs::remove_file(d.path().join("a/empty/new.py")).unwrap();

        fs::remove_dir(d.path().join("a/empty")).unwrap();
        fs::write(d.path().join("a/empty"), b"").unwrap();
        assert_eq!(changed(d.path(), &m), ("a/empty".into(), Change::Kind));
        fs::remove_file(d.path().join("a/empty")).unwrap();
        fs::create_dir(d.path().join("a/empty")).unwrap();

        m.verify(d.path(), &[]).unwrap();
        assert_eq!(m.digest(), tree_hash(d.path(), &[]).unwrap());
    }

    #[test]
    fn refuses_a_fifo() {
        let d = sample();
        let fifo = d.path().join("a/pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = tree_hash(d.path(), &[]).unwrap_err();
        assert!(
            matches!(e, TreeError::Unsupported { kind: "FIFO", .. }),
            "{e}"
        );
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let d = sample();
        let m = TreeManifest::scan(d.path(), &[]).unwrap();
        let back: TreeManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest(), m.digest());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// Trees of up to 12 files under a few directory names.
        fn files() -> impl Strategy<Value = BTreeMap<String, (Vec<u8>, bool)>> {
            let path = ("[ab]{0,1}", "[a-z]{1,6}").prop_map(|(dir, f)| {
                if dir.is_empty() {
                    f
                } else {
                    format!("{dir}/{f}")
                }
            });
            proptest::collection::btree_map(
                path,
                (proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()),
                1..12,
            )
        }

        fn build(files: &BTreeMap<String, (Vec<u8>, bool)>) -> Option<tempfile::TempDir> {
            let d = tempfile::tempdir().unwrap();
            for (p, (bytes, exec)) in files {
                let full = d.path().join(p);
                // A file named like a directory ("a" and "a/x"): skip the case.
                if fs::create_dir_all(full.parent().unwrap()).is_err()
                    || full.is_dir()
                    || fs::write(&full, bytes).is_err()
                {
                    return None;
                }
                fs::set_permissions(
                    &full,
                    fs::Permissions::from_mode(if *exec { 0o755 } else { 0o644 }),
                )
                .unwrap();
            }
            Some(d)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn same_files_same_hash_and_any_byte_flip_is_named(files in files(), pick in any::<proptest::sample::Index>(), bit in 0u8..8) {
                let Some(d1) = build(&files) else { return Ok(()) };
                let Some(d2) = build(&files) else { return Ok(()) };
                let m = TreeManifest::scan(d1.path(), &[]).unwrap();
                prop_assert_eq!(m.digest(), tree_hash(d2.path(), &[]).unwrap());

                let (path, (bytes, _)) = files.iter().nth(pick.index(files.len())).unwrap();
                let full = d1.path().join(path);
                if bytes.is_empty() {
                    fs::write(&full, [1u8 << bit]).unwrap();
                } else {
                    let mut b = bytes.clone();
                    let i = pick.index(b.len());
                    b[i] ^= 1 << bit;
                    fs::write(&full, &b).unwrap();
                }
                prop_assert_ne!(tree_hash(d1.path(), &[]).unwrap(), m.digest());
                match m.verify(d1.path(), &[]) {
                    Err(TreeError::Changed { path: p, change, .. }) => {
                        prop_assert_eq!(&p, path);
                        prop_assert_eq!(change, Change::Contents);
                    }
                    other => prop_assert!(false, "expected a change, got {:?}", other),
                }
            }

            #[test]
            fn an_added_or_removed_file_is_named(files in files(), pick in any::<proptest::sample::Index>()) {
                let Some(d) = build(&files) else { return Ok(()) };
                let m = TreeManifest::scan(d.path(), &[]).unwrap();
                let (path, _) = files.iter().nth(pick.index(files.len())).unwrap();
                fs::remove_file(d.path().join(path)).unwrap();
                match m.verify(d.path(), &[]) {
                    Err(TreeError::Changed { path: p, change, .. }) => {
                        prop_assert_eq!(&p, path);
                        prop_assert_eq!(change, Change::Removed);
                    }
                    other => prop_assert!(false, "expected removal, got {:?}", other),
                }
                let m2 = TreeManifest::scan(d.path(), &[]).unwrap();
                fs::write(d.path().join(path), b"").unwrap();
                match m2.verify(d.path(), &[]) {
                    Err(TreeError::Changed { path: p, change, .. }) => {
                        prop_assert_eq!(&p, path);
                        prop_assert_eq!(change, Change::Added);
                    }
                    other => prop_assert!(false, "expected addition, got {:?}", other),
                }
            }
        }
    }
}
