//! `lion store copy`: moves a log between stores — a home's SQLite and a
//! PostgreSQL database, either way — record for record, so its history and
//! its hash chain come along; the copy is verified before it is reported.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use agentic_core::plugin::{MAX_COMPONENT_BYTES, check_component, keep_component, kept_component};
use agentic_core::store::import;
use anyhow::{Result, bail};
use serde_json::json;

use super::Ctx;
use super::plugin::plugins_dir as plugin_dir;
use crate::home::{self, Checked, StoreAt};
use crate::output;

/// Records between progress lines on a terminal.
const PROGRESS_EVERY: u64 = 100_000;

/// Copies the log at `at` (of `home`) into `to`: a `postgres://` URL, or a
/// home directory.
pub async fn copy(home: &Path, at: &StoreAt, to: &str, ctx: Ctx) -> Result<()> {
    let destination = Destination::parse(to)?;
    destination.refuse_same(home, at)?;
    let from = Checked::open(home, at).await?;
    if from.store().head().await?.seq == 0 {
        bail!("the log to copy is empty: nothing to copy (is this the right home or --store?)");
    }
    let into = destination.open().await?;
    if let (Checked::Postgres(a), Checked::Postgres(b)) = (&from, &into)
        && a.store_id() == b.store_id()
    {
        bail!("the source and the destination are the same store");
    }
    // A kernel serving the destination would append to it (claims of the
    // tasks coming in) between the copy's transactions: none may, and none
    // may start on a home destination while the copy holds its lease.
    let lease = destination.refuse_kernels(&into).await?;
    let start = Instant::now();
    let tell = std::io::stderr().is_terminal() && !ctx.json;
    let mut shown = 0;
    let report = import::copy(from.store(), into.store(), |read| {
        if tell && read >= shown + PROGRESS_EVERY {
            shown = read;
            errln!("… {read} events read and copied");
        }
    })
    .await?;
    let verified = into.verify().await?;
    if verified.head != report.head {
        bail!(
            "the copy does not end where the source did: it verifies to seq {}, the source was at seq {}",
            verified.head.seq,
            report.head.seq
        );
    }
    if lease.is_none() {
        // No lease keeps kernels off a shared store: one that joined during
        // the copy is named (its claims would have failed the copy before).
        destination.refuse_kernels(&into).await?;
    }
    let components = copy_components(home, &from, &destination, &into).await?;
    let newer = from
        .store()
        .head()
        .await?
        .seq
        .saturating_sub(report.head.seq);
    let seconds = start.elapsed().as_secs_f64();
    if ctx.json {
        return output::json(&json!({
            "copied": report.copied,
            "already_there": report.already_there,
            "head": report.head,
            "verified": true,
            "source_newer_events": newer,
            "plugin_components": components.copied,
            "plugin_components_missing": components.missing,
            "to": destination.describe(&into),
            "seconds": seconds,
        }));
    }
    let kept = match report.already_there {
        0 => String::new(),
        n => format!(" after the {n} it already held"),
    };
    outln!(
        "copied {} event(s){kept} into {} in {seconds:.1} s; the copy verifies as one chain up to seq {} ({})",
        report.copied,
        destination.describe(&into),
        report.head.seq,
        report.head.hash,
    );
    if components.copied > 0 {
        outln!("copied {} plugin component(s)", components.copied);
    }
    for name in &components.missing {
        outln!(
            "plugin {name}: its component is in neither the source home nor the source store; reinstall it (lion plugin remove, then install)"
        );
    }
    if newer > 0 {
        outln!(
            "the source has {newer} newer event(s) (something appended during the copy): run the copy again to bring them over"
        );
    }
    drop(lease);
    match &destination {
        Destination::Postgres(_) => outln!(
            "use it with --store URL, LION_STORE=URL, or url under [store] in {}",
            home.join("config.toml").display()
        ),
        Destination::Home(path) => outln!("use it with --home {}", path.display()),
    }
    Ok(())
}

/// Where a copy goes.
enum Destination {
    /// A PostgreSQL database (its URL).
    Postgres(String),
    /// A home directory, whose SQLite store takes the log.
    Home(std::path::PathBuf),
}

impl Destination {
    fn parse(to: &str) -> Result<Self> {
        if to.contains("://") {
            return Ok(Destination::Postgres(home::shared_url(to)?));
        }
        if to.is_empty() || to.contains('=') {
            // Not a path: `host=… password=…` is a connection string.
            bail!("--to needs a postgres:// URL or a home directory");
        }
        Ok(Destination::Home(to.into()))
    }

    /// Refuses a copy of a store onto itself.
    fn refuse_same(&self, home: &Path, at: &StoreAt) -> Result<()> {
        let same = match (self, at) {
            (Destination::Postgres(to), StoreAt::Postgres(from)) => to == from,
            (Destination::Home(to), StoreAt::Home) => {
                to == home
                    || matches!((to.canonicalize(), home.canonicalize()), (Ok(a), Ok(b)) if a == b)
            }
            _ => false,
        };
        if same {
            bail!("the source and the destination are the same store");
        }
        Ok(())
    }

    /// Refuses a destination that a kernel serves; a home's lease is taken
    /// (and kept while the lease lives), so that none starts meanwhile.
    async fn refuse_kernels(&self, into: &Checked) -> Result<Option<crate::lease::Lease>> {
        let (alive, lease) = match (self, into.store().kernels()) {
            (Destination::Home(path), _) => match crate::lease::acquire(path) {
                Ok(lease) => (0, Some(lease)),
                Err(_) => (1, None),
            },
            (Destination::Postgres(_), Some(registry)) => (registry.alive().await?.len(), None),
            (Destination::Postgres(_), None) => (0, None),
        };
        if alive > 0 {
            bail!(
                "{alive} kernel(s) serve the destination: stop them until the copy is done (they would write to it meanwhile)"
            );
        }
        Ok(lease)
    }

    async fn open(&self) -> Result<Checked> {
        Ok(match self {
            Destination::Postgres(url) => Checked::Postgres(home::open_postgres(url).await?),
            Destination::Home(path) => Checked::Home(home::open_sqlite(path)?),
        })
    }

    /// Names the destination without credentials.
    fn describe(&self, opened: &Checked) -> String {
        match (self, opened) {
            (_, Checked::Postgres(store)) => store.location().to_owned(),
            (Destination::Home(path), _) => format!("the home {}", path.display()),
            (Destination::Postgres(_), Checked::Home(_)) => String::from("the store"),
        }
    }
}

/// What [`copy_components`] did.
struct Components {
    /// Components kept at the destination.
    copied: usize,
    /// Plugins whose component was found nowhere.
    missing: Vec<String>,
}

/// Brings the components of the plugins installed in the copied log along:
/// from the source home's files or the source store, into the destination
/// store or the destination home's files (each checked against its hash).
async fn copy_components(
    home: &Path,
    from: &Checked,
    destination: &Destination,
    into: &Checked,
) -> Result<Components> {
    let mut done = Components {
        copied: 0,
        missing: Vec::new(),
    };
    let mut after = agentic_core::Cursor::START;
    loop {
        let page = into.store().plugins(after, 256).await?;
        for plugin in &page.items {
            let installed = &plugin.installed;
            if installed.is_server() {
                continue; // its program is per machine
            }
            let sha = installed.sha256();
            let name = installed.manifest.name.clone();
            let found = async {
                let in_store = match from.store().blobs() {
                    Some(blobs) => blobs.blob(sha, MAX_COMPONENT_BYTES).await?,
                    None => None,
                };
                match in_store {
                    Some(bytes) => Ok(Some(bytes)),
                    None => kept_component(&plugin_dir(home), sha).map_err(anyhow::Error::from),
                }
            };
            let bytes = match found.await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    done.missing.push(name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "a plugin component was not copied");
                    done.missing.push(name);
                    continue;
                }
            };
            match (destination, into.store().blobs()) {
                (_, Some(blobs)) => {
                    check_component("the source's copy", sha, &bytes)?;
                    blobs.put_blob(sha, &bytes).await?;
                }
                (Destination::Home(path), None) => keep_component(&plugin_dir(path), sha, &bytes)?,
                (Destination::Postgres(_), None) => continue,
            }
            done.copied += 1;
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(done),
        }
    }
}
