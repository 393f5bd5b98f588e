// The dashboard's benchmark, run by `lion bench dashboard`: for each home
// it is given (LION_HOMES: a JSON list of {name, url, token}), the time to
// the timeline's first rendered row (a fresh browser context each run,
// signed in beforehand), and the frame times while the timeline scrolls
// from the middle of the log at a fast wheel's pace (100 px a frame, 240
// frames), once the timeline's read model has caught up with the log; and
// whether the rows a reader scrolled back to stay put while 200 events
// stream in. Prints one JSON object: per home, the first-render times, the
// frame times, the frames that showed rows not yet loaded, the rows the
// view moved by, and how long the read model took to catch up (times in
// milliseconds).

import { launch } from "./browser.mjs";

const homes = JSON.parse(process.env.LION_HOMES ?? "[]");
const runs = Number(process.env.RUNS ?? 5);
const browser = await launch();
const out = {};
try {
  // A first start builds the timeline's read model in the background:
  // every home is measured once every home's has caught up (one building
  // would slow the other's measurement); how long that took is kept.
  const caughtUp = {};
  const began = Date.now();
  for (const home of homes) {
    const auth = { authorization: `Bearer ${home.token}` };
    for (;;) {
      const health = await (await fetch(`${home.url}/health`)).json();
      const page = await (await fetch(`${home.url}/timeline?limit=1`, { headers: auth })).json();
      if (page.indexed >= health.head_seq) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    caughtUp[home.name] = Date.now() - began;
  }
  for (const home of homes) {
    const indexed_ms = caughtUp[home.name];
    const first = [];
    let frames = { times: [], unloaded: 0 };
    let moved = null;
    for (let run = 0; run < runs; run++) {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const signed = await context.request.post(`${home.url}/auth/session`, { data: { token: home.token } });
      if (!signed.ok()) throw new Error(`${home.name}: sign-in refused (${signed.status()})`);
      const page = await context.newPage();
      await page.goto(`${home.url}/#timeline`);
      await page.locator(".row .type").first().waitFor();
      // Since the navigation started, by the page's own clock.
      first.push(await page.evaluate(() => performance.now()));
      if (run === runs - 1) {
        frames = await page.evaluate(scrollFrames);
        moved = await rowsMoved(page, home);
      }
      await context.close();
    }
    out[home.name] = {
      first_render_ms: first,
      frame_ms: frames.times,
      unloaded_frames: frames.unloaded,
      rows_moved: moved?.moved ?? null,
      bottom_is_newest: moved?.bottomIsNewest ?? null,
      indexed_ms,
    };
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));

/** In the page: from the middle of the log, 240 frames scrolling down 100
 * px each; the time between frames, and how many showed a row in view not
 * loaded yet ("…"). */
async function scrollFrames() {
  const box = document.querySelector(".scroller");
  box.scrollTop = Math.floor((box.scrollHeight - box.clientHeight) / 2);
  const times = [];
  let unloaded = 0;
  let last = performance.now();
  await new Promise((done) => {
    const frame = (now) => {
      times.push(now - last);
      last = now;
      if (box.querySelector(".row .loading")) unloaded++;
      box.scrollTop += 100;
      if (times.length < 240) requestAnimationFrame(frame);
      else done();
    };
    requestAnimationFrame(frame);
  });
  return { times: times.slice(1), unloaded };
}

/** The rows a reader scrolled back to (the middle of the log, not
 * following) moved by while 200 events streamed in: the sequence number
 * of the top row in view, after less before (0: they stayed put). `null`
 * on a home too small to scroll. */
async function rowsMoved(page, home) {
  const topRow = () =>
    page.evaluate(() => {
      const box = document.querySelector(".scroller");
      const top = box.getBoundingClientRect().top;
      const rows = [...box.querySelectorAll(".row")]
        .filter((r) => r.getBoundingClientRect().top >= top - 1 && !r.querySelector(".loading"))
        .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top);
      return rows.length ? Number(rows[0].querySelector(".seq").textContent) : null;
    });
  const scrolls = await page.evaluate(() => {
    const box = document.querySelector(".scroller");
    box.scrollTop = Math.floor((box.scrollHeight - box.clientHeight) / 2);
    return box.scrollHeight > box.clientHeight * 2;
  });
  if (!scrolls) return null;
  // The scroll's own render first, then its rows loaded.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForFunction(() => !document.querySelector(".scroller .row .loading"));
  const before = await topRow();
  const head = Number((await page.locator("[data-testid=head]").textContent()).split(" ")[0]);
  for (let i = 0; i < 200; i++) {
    const created = await fetch(`${home.url}/elements`, {
      method: "POST",
      headers: { authorization: `Bearer ${home.token}`, "content-type": "application/json" },
      body: JSON.stringify({ metadata: { bench: "stream" }, content: String(i) }),
    });
    if (!created.ok) throw new Error(`${home.name}: POST /elements answered ${created.status}`);
  }
  await page.locator("[data-testid=head]", { hasText: `${head + 200} events` }).waitFor();
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const moved = (await topRow()) - before;
  // Then down to the bottom of the scroll bar: the newest event is the
  // last row in view (nothing streamed in was skipped on the way).
  await page.evaluate(() => {
    const box = document.querySelector(".scroller");
    box.scrollTop = box.scrollHeight;
  });
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForFunction(() => !document.querySelector(".scroller .row .loading"));
  const last = await page.evaluate(() => {
    const box = document.querySelector(".scroller");
    const bottom = box.getBoundingClientRect().bottom;
    const seqs = [...box.querySelectorAll(".row")]
      .filter((r) => r.getBoundingClientRect().bottom <= bottom + 1)
      .map((r) => Number(r.querySelector(".seq").textContent));
    return Math.max(...seqs);
  });
  return { moved, bottomIsNewest: last === head + 200 };
}
