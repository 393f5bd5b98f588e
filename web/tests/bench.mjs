// The dashboard's benchmark, run by `lion bench dashboard`: for each home
// it is given (LION_HOMES: a JSON list of {name, url, token}), the time to
// the timeline's first rendered row (a fresh browser context each run,
// signed in beforehand), and the frame times while the timeline scrolls
// (a step per animation frame), once the timeline's read model has caught
// up with the log. Prints one JSON object: per home, the first-render
// times, the frame times and how long the read model took to catch up, in
// milliseconds.

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
    let frames = [];
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
        // Scrolls from the top, a step per frame, for 240 frames.
        frames = await page.evaluate(async () => {
          const box = document.querySelector(".scroller");
          box.scrollTop = 0;
          const step = Math.max(1, Math.floor((box.scrollHeight - box.clientHeight) / 240));
          const times = [];
          let last = performance.now();
          await new Promise((done) => {
            const frame = (now) => {
              times.push(now - last);
              last = now;
              box.scrollTop += step;
              if (times.length < 240) requestAnimationFrame(frame);
              else done();
            };
            requestAnimationFrame(frame);
          });
          return times.slice(1);
        });
      }
      await context.close();
    }
    out[home.name] = { first_render_ms: first, frame_ms: frames, indexed_ms };
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
