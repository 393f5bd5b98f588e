//! Output helpers: readable tables for people, JSON for programs.

use std::future::Future;

use agentic_core::{Cursor, Page, StoreError};
use comfy_table::{Table, presets};
use serde::Serialize;

/// Items read per page when a command lists a whole list.
pub const LIST_PAGE: usize = 512;

/// Every item of a paged list, read page by page with `read`.
pub async fn every<T, F>(mut read: impl FnMut(Cursor) -> F) -> Result<Vec<T>, StoreError>
where
    F: Future<Output = Result<Page<T>, StoreError>>,
{
    let mut all = Vec::new();
    let mut after = Cursor::START;
    loop {
        let page = read(after).await?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = next,
            None => return Ok(all),
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
    println!("{}", serde_json::to_string(value)?);
    Ok(())
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
