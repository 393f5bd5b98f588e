//! lion's example plugin: reads the directory granted at guest path `/data`.
//!
//! `list` `{}` answers `{"entries":[...]}` (sorted names; `{"path":"sub"}`
//! lists a subdirectory) and `read` `{"path":"notes.txt"}` answers
//! `{"content":"..."}`. Relative paths are taken from `/data`; absolute
//! paths are used as they are, so it is the sandbox, not this plugin, that
//! refuses anything outside the grant.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the granted directory is mounted.
const ROOT: &str = "/data";

/// The input of `list`.
#[derive(Deserialize)]
struct ListInput {
    /// A directory, `/data` itself when absent.
    #[serde(default)]
    path: String,
}

/// The output of `list`.
#[derive(Serialize)]
struct Entries {
    entries: Vec<String>,
}

/// The input of `read`.
#[derive(Deserialize)]
struct ReadInput {
    path: String,
}

/// The output of `read`.
#[derive(Serialize)]
struct Content {
    content: String,
}

/// The names in a directory, sorted.
fn list(input: ListInput) -> Result<Entries, String> {
    let dir = resolve(&input.path);
    let error = |e: std::io::Error| format!("list {}: {e}", dir.display());
    let mut entries = std::fs::read_dir(&dir)
        .map_err(error)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    entries.sort();
    Ok(Entries { entries })
}

/// A file's content, as UTF-8 text.
fn read(input: ReadInput) -> Result<Content, String> {
    let path = resolve(&input.path);
    let content =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(Content { content })
}

/// `path` under `/data` (`/data` itself for `""`), or `path` itself when it
/// is absolute.
fn resolve(path: &str) -> PathBuf {
    if path.is_empty() {
        PathBuf::from(ROOT)
    } else {
        Path::new(ROOT).join(path)
    }
}

agentic_pdk::plugin!(list, read);
