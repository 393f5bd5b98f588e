//! `lion store copy`: moves a log between stores — a home's SQLite and a
//! PostgreSQL database, either way — record for record, so its history and
//! its hash chain come along; the copy is verified before it is reported.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use agentic_core::store::import;
use anyhow::{Result, bail};
use serde_json::json;

use super::Ctx;
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
    let start = Instant::now();
    let tell = std::io::stderr().is_terminal() && !ctx.json;
    let mut shown = 0;
    let report = import::copy(from.store(), into.store(), |read| {
        if tell && read >= shown + PROGRESS_EVERY {
            shown = read;
            eprintln!("… {read} events read and copied");
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
            "to": destination.describe(&into),
            "seconds": seconds,
        }));
    }
    let kept = match report.already_there {
        0 => String::new(),
        n => format!(" after the {n} it already held"),
    };
    println!(
        "copied {} event(s){kept} into {} in {seconds:.1} s; the copy verifies as one chain up to seq {} ({})",
        report.copied,
        destination.describe(&into),
        report.head.seq,
        report.head.hash,
    );
    if newer > 0 {
        println!(
            "the source has {newer} newer event(s) (something appended during the copy): run the copy again to bring them over"
        );
    }
    match &destination {
        Destination::Postgres(_) => println!(
            "use it with --store URL, LION_STORE=URL, or url under [store] in {}",
            home.join("config.toml").display()
        ),
        Destination::Home(path) => println!("use it with --home {}", path.display()),
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
        if to.is_empty() {
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
