// Browser test of the dashboard's Kernels view on a shared store, run by
// `crates/agentic_cli/tests/dashboard.rs` with `lion serve` and a `lion run`
// kernel on one PostgreSQL database:
//   LION_URL, LION_TOKEN  the server's address and API token
//   SCREENSHOTS  the folder the screenshot goes to
//   KERNEL_PIDS  the two kernels' process ids, comma-separated
// Checks that the view lists both kernels, alive, with their heartbeats and
// the one attempt claimed between them, and that a heartbeat ages and is
// renewed (the view asks again on its own). Exits non-zero on failure.

import { join } from "node:path";
import { launch } from "./browser.mjs";

const url = process.env.LION_URL;
const token = process.env.LION_TOKEN;
const shots = process.env.SCREENSHOTS;
const pids = (process.env.KERNEL_PIDS ?? "").split(",").filter(Boolean);
if (!url || !token || !shots || pids.length !== 2) {
  console.error("kernels.mjs: set LION_URL, LION_TOKEN, SCREENSHOTS and KERNEL_PIDS (two)");
  process.exit(2);
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await launch();
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(`${url}/#kernels`);
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  const table = page.locator("table[data-testid=kernels]");
  await table.locator("tbody tr").nth(1).waitFor();
  // Columns: kernel, state, host, pid, claims, last heartbeat, lease, since.
  const rows = await table.locator("tbody tr").evaluateAll((trs) =>
    trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent.trim())),
  );
  check(rows.length === 2, `two kernels listed (${rows.length})`);
  check(
    rows.map((r) => r[3]).sort().join() === [...pids].sort().join(),
    `the kernels are the two processes (${rows.map((r) => r[3])})`,
  );
  check(rows.every((r) => r[1] === "alive"), "both alive");
  check(rows.reduce((n, r) => n + Number(r[4]), 0) === 1, "the one running attempt is claimed by one of them");
  check(rows.every((r) => / s ago$/.test(r[5])), "each shows its last heartbeat");
  // The view reads again by itself: the heartbeats' ages change.
  const before = rows.map((r) => r[5]).join();
  await page.waitForFunction(
    (was) =>
      [...document.querySelectorAll("table[data-testid=kernels] tbody tr td:nth-child(6)")]
        .map((td) => td.textContent.trim())
        .join() !== was,
    before,
  );
  check(true, "the heartbeats are read again without a reload");
  await page.screenshot({ path: join(shots, "kernels-shared.png") });
} finally {
  await browser.close();
}
