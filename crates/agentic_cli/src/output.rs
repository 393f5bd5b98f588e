//! Output helpers: readable tables for people, JSON for programs.

use std::future::Future;

use agentic_core::{Cursor, Page, StoreError};

use crate::cli::Paging;
use comfy_table::{Table, presets};
use serde::Serialize;

/// Items read per page when a command lists a whole list.
pub const LIST_PAGE: usize = 512;

/// The part of a list `paging` asks for, read with `read(after, limit)`:
/// every item from its start (or from `--after`), or one page of `--limit`
/// items with where the next page starts.
pub async fn listed<T, F>(
    paging: Paging,
    mut read: impl FnMut(Cursor, usize) -> F,
) -> Result<Listed<T>, StoreError>
where
    F: Future<Output = Result<Page<T>, StoreError>>,
{
    let after = paging.after.map_or(Cursor::START, Cursor);
    match paging.limit {
        Some(limit) => {
            let page = read(after, limit as usize).await?;
            Ok(Listed {
                items: page.items,
                paged: true,
                limit,
                next: page.next,
            })
        }
        None => {
            let mut items = Vec::new();
            let mut after = after;
            loop {
                let page = read(after, LIST_PAGE).await?;
                items.extend(page.items);
                match page.next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            Ok(Listed {
                items,
                paged: false,
                limit: 0,
                next: None,
            })
        }
    }
}

/// What a list command shows.
pub struct Listed<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Whether one page was asked for (`--limit`).
    pub paged: bool,
    /// The page's `--limit` (0 when the whole list was asked for).
    pub limit: u32,
    /// Where the next page starts, if the list goes on after this page.
    pub next: Option<Cursor>,
}

impl<T: Serialize> Listed<T> {
    /// Prints the items as JSON: an array, or for a page, the page's items
    /// and where the next page starts (`{"items": […], "next": N}`).
    pub fn json(&self) -> anyhow::Result<()> {
        self.json_with(|item| Ok(serde_json::to_value(item)?))
    }
}

impl<T> Listed<T> {
    /// [`Listed::json`] with each item made into JSON by `value`.
    pub fn json_with(
        &self,
        value: impl Fn(&T) -> anyhow::Result<serde_json::Value>,
    ) -> anyhow::Result<()> {
        let items = self
            .items
            .iter()
            .map(value)
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.paged {
            json(&serde_json::json!({ "items": items, "next": self.next }))
        } else {
            json(&items)
        }
    }

    /// For people: the line saying how to see the next page of `command`
    /// (e.g. `lion task list`), if there is one.
    pub fn more(&self, command: &str) {
        if let Some(next) = self.next {
            outln!("more: {command} --limit {} --after {next}", self.limit);
        }
    }
}

/// A table with the given column headers, in lion's plain style.
pub fn table<const N: usize>(headers: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_header(headers);
    t
}

/// The table a benchmark prints: each measurement beside the baseline
/// measured in the same run, its target and the verdict.
pub fn bench_table() -> Table {
    table([
        "measurement",
        "figure",
        "same-run baseline",
        "target",
        "verdict",
    ])
}

/// Prints `value` as one line of JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Writes `text` to stdout and flushes it (what [`outln!`] and [`out!`]
/// do): a closed stdout ends the process as it ends `cat`
/// ([`platform::end_on_closed_stdout`]); any other failure to write (a full
/// disk behind a redirect) ends it with a one-line error, status 1.
///
/// [`platform::end_on_closed_stdout`]: crate::platform::end_on_closed_stdout
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(text).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            crate::platform::end_on_closed_stdout()
        }
        Err(e) => {
            errln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// Shortens `text` to `max` characters for a table cell.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// A rate for a table cell: `12.3k`, `4.56M`, `789`.
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
