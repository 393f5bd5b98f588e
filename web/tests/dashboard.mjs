// Browser test of the dashboard, in Debian's headless Chromium driven by
// playwright-core (no browser download). `crates/agentic_cli/tests/dashboard.rs`
// starts `lion serve` on a fresh home and runs this with:
//   LION_URL     the server's address
//   LION_TOKEN   its API token
//   SCREENSHOTS  the folder the screenshots go to
//   PROVIDER_CONTROL  the scripted LLM provider's address: GET /release
//                sends the answer's next chunk
//   TOOL_PROMPT  a prompt the scripted model answers by calling the tool
//                http_fetch__get (then, given its result, with text)
//   LION_BIN, LION_HOME  the lion binary and the home it serves (the CLI
//                works beside the server)
//   LION_SERVER_PID  the server's process, killed at the end (the page
//                says the server is unreachable)
// It does real work through the API (with the token, as any client) and the
// CLI, and checks the page: a wrong or missing token shows the sign-in page
// and no data; signed in, the timeline lists the log and new events appear
// without a reload; an event's JSON opens; the chain verifies; a task tree
// cancelled from the page shows every child cancelled; an approval granted
// in the page lets its workflow complete; a denied plugin call shows its
// denial; an agent's answer grows in the page while the model is still
// generating it; events streaming in shift nothing on the page; the
// keyboard opens filtered matches; a dark theme and a narrow screen fit;
// the server killed, the page says it is unreachable. Exits non-zero, naming the failed check, on the first
// failure.

import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch } from "./browser.mjs";

const url = process.env.LION_URL;
const token = process.env.LION_TOKEN;
const shots = process.env.SCREENSHOTS;
const control = process.env.PROVIDER_CONTROL;
const lionBin = process.env.LION_BIN;
const lionHome = process.env.LION_HOME;
const serverPid = Number(process.env.LION_SERVER_PID);
const toolPrompt = process.env.TOOL_PROMPT;
if (!url || !token || !shots || !control || !lionBin || !lionHome || !serverPid || !toolPrompt) {
  console.error(
    "dashboard.mjs: set LION_URL, LION_TOKEN, SCREENSHOTS, PROVIDER_CONTROL, TOOL_PROMPT, LION_BIN, LION_HOME and LION_SERVER_PID",
  );
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

/** Calls the API with the token, as any client. */
async function api(method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  // Every answer with data: anything but the page itself, its assets and
  // the sign-in exchange.
  const dataRequests = [];
  page.on("response", (r) => {
    const path = new URL(r.url()).pathname;
    const asset = path === "/" || path === "/index.html" || path.startsWith("/assets/") || path === "/favicon.ico";
    if (!asset && path !== "/auth/session" && r.status() === 200) dataRequests.push(path);
  });
  // Layout shifts not caused by input (a row moving as events stream in).
  await page.addInitScript(() => {
    window.__shifts = [];
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.__shifts.push(entry.value);
    }).observe({ type: "layout-shift", buffered: true });
  });
  const shifted = () => page.evaluate(() => window.__shifts.reduce((a, b) => a + b, 0));

  // No token: the sign-in page, and no data.
  await page.goto(url + "/");
  await page.locator("#token").waitFor();
  check((await page.locator(".row").count()) === 0, "without a token no event is shown");
  await page.screenshot({ path: join(shots, "sign-in.png") });

  // A wrong token: refused, still no data.
  await page.fill("#token", "not-the-token");
  await page.click("button[type=submit]");
  await page.locator("#status", { hasText: "not this server's" }).waitFor();
  check((await page.locator(".row").count()) === 0, "a wrong token shows no event");
  check(dataRequests.length === 0, `no data was served before signing in (${dataRequests.join(", ")})`);

  // Real work before signing in: an element.
  const first = await api("POST", "/elements", { metadata: { name: "before" }, content: "first" });

  // The right token: the timeline.
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.locator(".row .type", { hasText: "element_created" }).first().waitFor();
  check(true, "signed in, the timeline lists the log");

  // Live: a new element appears without a reload.
  await api("POST", "/elements", { metadata: { name: "live" }, content: "second" });
  await page.locator(".row .summary", { hasText: '"live"' }).waitFor();
  check(true, "an element created through the API appears live");

  // And one created by another lion process, through the CLI.
  execFileSync(lionBin, ["--home", lionHome, "element", "create", "--content", "from the CLI"]);
  await page.locator(".row .summary", { hasText: "from the CLI" }).waitFor();
  check(true, "an element created with the CLI beside the server appears live");

  // Its JSON opens on a click.
  await page.locator(".row .summary", { hasText: '"live"' }).click();
  await page.locator("[data-testid=event-json]", { hasText: '"live"' }).waitFor();
  check(true, "a clicked event shows its JSON");

  // Keyboard: the arrow moves the selection to the event before.
  await page.locator(".scroller").focus();
  await page.keyboard.press("ArrowUp");
  await page.locator(".detail h2", { hasText: "#1 element_created" }).waitFor();
  check(true, "the arrow keys move through the events");

  // Events streaming in shift nothing: the rows are fixed in height, the
  // counts fixed in width.
  const before = await shifted();
  for (let i = 0; i < 20; i++) await api("POST", "/elements", { metadata: { name: `burst ${i}` }, content: "x" });
  await page.locator(".row .summary", { hasText: '"burst 19"' }).waitFor();
  const shift = (await shifted()) - before;
  check(shift < 0.001, `20 events streaming in shift nothing on the timeline (layout shift ${shift.toFixed(4)})`);

  // The chain verifies.
  await page.click("text=Verify chain");
  await page.locator("[data-testid=verified]", { hasText: "chain verified" }).waitFor();
  check(true, "the chain verifies from the page");
  await page.screenshot({ path: join(shots, "timeline.png") });

  // Tasks: the newest trees come first, however many tasks the home holds
  // (here 211 older ones: more than one page of the API's own list); a tree
  // cancelled from the page ends with every child cancelled.
  await api("POST", "/tasks", {
    handler: "fanout",
    input: { n: 210, handler: "echo", input: 1 },
    wait: true,
  });
  const root = await api("POST", "/tasks", {
    handler: "fanout",
    input: { n: 3, handler: "sleep", input: { ms: 600000 } },
  });
  await page.click("nav >> text=Tasks");
  const tree = page.locator(`li:has(> [data-task="${root.id}"])`);
  await tree.locator("[data-task][data-status=running]").nth(3).waitFor();
  check(true, "a task tree appears with its children running");
  await page.click(`button[aria-label="Cancel task ${root.id}"]`);
  await tree.locator("[data-task][data-status=cancelled]").nth(3).waitFor();
  check(
    (await tree.locator("[data-task]").count()) === 4 &&
      (await tree.locator("[data-task][data-status=cancelled]").count()) === 4,
    "a tree cancelled from the page shows every child cancelled",
  );
  await page.click(`[data-task="${root.id}"] button.link`);
  await page.locator(".attempts tbody tr").first().waitFor();
  await page.screenshot({ path: join(shots, "tasks.png") });

  // Workflows: an approval granted in the page lets its run go on.
  const flow = [
    'name = "approve-me"',
    "[steps.ask]",
    'kind = "approval"',
    'prompt = "Ship it?"',
    'timeout = "1h"',
    "[steps.then]",
    'kind = "timer"',
    'duration = "10ms"',
    'after = ["ask"]',
  ].join("\n");
  const run = await api("POST", "/workflows", { main: "flow.toml", files: { "flow.toml": flow } });
  await page.click("nav >> text=Workflows");
  // It waits, in the list of runs and among the decisions waiting.
  await page.locator(`li:has(> [data-run="${run.id}"]) .status-waiting`).waitFor();
  const approval = page.locator(`[data-approval="${run.id}/ask"]`);
  await approval.waitFor();
  check(true, "a run waiting for approval says so in the list, and its approval is listed");
  await approval.locator(`button[aria-label^="Approve ask of"]`).click();
  await approval.waitFor({ state: "detached" });
  await page.click(`[data-run="${run.id}"]`);
  await page.locator("[data-testid=run-status]", { hasText: "completed" }).waitFor();
  check(true, "an approval granted in the page lets its workflow complete");
  // A fork says where it came from, and that run opens from it.
  const fork = await api("POST", `/workflows/${run.id}/fork`, { from: "then" });
  const forked = page.locator(`li:has(> [data-run="${fork.id}"])`);
  await forked.locator(`[data-run="${fork.id}"]`).click();
  const shownRun = page.locator(".detail.run > p.muted").first();
  await page.waitForFunction(
    (id) => document.querySelector(".detail.run > p.muted")?.textContent?.startsWith(id),
    fork.id,
  );
  await forked.locator("button", { hasText: "forked from" }).click();
  await page.waitForFunction(
    (id) => document.querySelector(".detail.run > p.muted")?.textContent?.startsWith(id),
    run.id,
  );
  check((await shownRun.textContent()).startsWith(run.id), "the origin opened");
  check(true, "a fork shows its origin, which opens the run it came from");
  await page.screenshot({ path: join(shots, "workflows.png") });
  await page.click("nav >> text=Timeline");

  // Plugins: a denied call shows its denial, with what was refused.
  await api("POST", "/plugins", { manifest: "http_fetch/plugin.toml", grant: [] });
  const denied = await fetch(url + "/plugins/http_fetch/call/get", {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ url: "http://127.0.0.1:9/" }),
  });
  check(!denied.ok, "the plugin call without its grant is refused");
  await page.click("nav >> text=Plugins");
  await page.click('[data-plugin="http_fetch"]');
  await page
    .locator(".plugin-events li.denied", { hasText: "interface http" })
    .waitFor();
  check(true, "a denied plugin call shows its denial and what was refused");
  await page.screenshot({ path: join(shots, "plugins.png") });
  await page.click("nav >> text=Timeline");

  // Timeline filters (served by the read model) and an event's causes and
  // effects: a workflow's step task was caused by its run.
  const causing = [
    'name = "causes"',
    "[steps.call]",
    'kind = "plugin"',
    'plugin = "http_fetch"',
    'function = "get"',
    'input = { url = "http://127.0.0.1:9/" }',
  ].join("\n");
  const run2 = await api("POST", "/workflows", { main: "c.toml", files: { "c.toml": causing } });
  await page.click("nav >> text=Timeline");
  await page.fill('input[aria-label="Filter by correlation"]', run2.id);
  await page.click("form.filters button[type=submit]");
  const submitted = page.locator(".matches .row", { hasText: "task_submitted" });
  await submitted.first().waitFor();
  check(
    (await page.locator(".matches .row").count()) >= 3 &&
      (await page.locator(".matches .row .type").allTextContents()).every((t) =>
        ["workflow_recorded", "task_submitted", "task_started", "task_failed", "task_completed"].includes(t),
      ),
    "filtered by correlation, the timeline lists that run's events only",
  );
  await submitted.first().click();
  await page.locator("[data-testid=causes]", { hasText: "workflow_recorded" }).waitFor();
  check(true, "a step task's submission shows the run that caused it");
  await page.locator("[data-testid=causes] button").first().click();
  await page.locator("[data-testid=effects]", { hasText: "task_submitted" }).waitFor();
  check(true, "the run's start shows the step task among its effects");
  // The keyboard moves through the matches (newest first).
  await page.locator(".matches").focus();
  await page.keyboard.press("Home");
  const newestMatch = await page.locator(".matches .row .seq").first().textContent();
  await page.locator(".detail h2", { hasText: `#${newestMatch} ` }).waitFor();
  await page.keyboard.press("ArrowDown");
  const secondMatch = await page.locator(".matches .row .seq").nth(1).textContent();
  await page.locator(".detail h2", { hasText: `#${secondMatch} ` }).waitFor();
  check(true, "the keyboard opens the filtered matches");
  await page.screenshot({ path: join(shots, "timeline-filtered.png") });
  await page.click("form.filters >> text=clear");

  // Agents: the answer grows in the page while the model is generating it
  // (the scripted provider sends its next chunk only when released).
  await api("POST", "/agents", { name: "ada", system: "Be brief." });
  await page.click("nav >> text=Agents");
  await page.click('[data-agent="ada"]');
  await page.locator("[data-testid=tokens]").waitFor();
  const asked = api("POST", "/agents/ada/messages", { text: "Hi" });
  const streaming = page.locator("[data-testid=streaming]");
  await streaming.filter({ hasText: "Hello" }).waitFor();
  check((await streaming.textContent()) === "Hello", "the first chunk shows while the model is still generating");
  await fetch(control + "/release");
  await streaming.filter({ hasText: "Hello there" }).waitFor();
  check((await streaming.textContent()) === "Hello there", "the answer grows in the page as chunks arrive");
  await page.screenshot({ path: join(shots, "agents-streaming.png") });
  await fetch(control + "/release");
  const answered = await asked;
  check(answered.content === "Hello there, Ada.", "the agent answered");
  await page.locator(".message.assistant:not(.streaming)", { hasText: "Hello there, Ada." }).waitFor();
  await page.locator("[data-testid=tokens]", { hasText: "12 of" }).waitFor();
  check(true, "the finished answer joins the conversation, with the tokens it used");
  // A tool call the agent was not granted: the call and its refusal show
  // in the conversation.
  await api("POST", "/agents", { name: "bea", system: "Use tools." });
  const refused = await api("POST", "/agents/bea/messages", { text: toolPrompt });
  check(refused.content === "The tool was refused.", "the agent answered after its tool call");
  await page.click('[data-agent="bea"]');
  await page.locator(".tool-call", { hasText: "http_fetch__get" }).waitFor();
  await page.locator(".message.tool.refused", { hasText: "not granted" }).waitFor();
  check(true, "an agent's tool call shows, with its refusal");
  await page.screenshot({ path: join(shots, "agents.png") });
  await page.click("nav >> text=Timeline");

  // Overview: the last minute's events counted live; Kernels: this home's.
  await page.click("nav >> text=Overview");
  await page.locator("[data-testid=events-chart] polyline").waitFor();
  const peak = await page.locator("[data-testid=events-chart] figcaption").first().textContent();
  check(!/peak 0\)/.test(peak ?? ""), `the overview counted the events streamed (${peak})`);
  await page.locator(".chart figcaption", { hasText: /tokens\/s \(peak [1-9]\d*\)/ }).waitFor();
  check(true, "the overview counted the agent's tokens");
  await page.locator("[data-testid=task-states] dd", { hasText: /^\d+$/ }).first().waitFor();
  check(true, "the overview shows the tasks by state");
  await page.screenshot({ path: join(shots, "overview.png") });
  await page.click("nav >> text=Kernels");
  await page.locator("[data-testid=kernels]", { hasText: "One kernel serves this store" }).waitFor();
  check(true, "the kernels view says which kernel serves the store");
  await page.screenshot({ path: join(shots, "kernels.png") });
  await page.click("nav >> text=Timeline");

  // Dark, and narrow.
  await page.click("button[aria-label^='Theme']");
  await page.click("button[aria-label^='Theme']");
  check(
    (await page.evaluate(() => document.documentElement.dataset.theme)) === "dark" &&
      (await page.evaluate(() => getComputedStyle(document.body).backgroundColor)) !== "rgb(255, 255, 255)",
    "the theme switches to dark",
  );
  await page.screenshot({ path: join(shots, "timeline-dark.png") });
  await page.setViewportSize({ width: 390, height: 800 });
  await page.screenshot({ path: join(shots, "timeline-narrow.png") });
  // Narrow: no view is wider than the screen.
  for (const view of ["overview", "timeline", "tasks", "workflows", "agents", "plugins", "kernels"]) {
    await page.goto(`${url}/#${view}`);
    await page.locator("header nav").waitFor();
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 390, `#${view} fits a 390 px screen (${wide} px)`);
    // Every control has an accessible name: its label, its text or an
    // aria-label.
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll("button, input, select, a[href], [tabindex]")]
        .filter((el) => !(el.getAttribute("aria-label") || el.textContent.trim() || el.labels?.length))
        .map((el) => el.outerHTML.slice(0, 80)),
    );
    check(unnamed.length === 0, `#${view}: every control has a name (${unnamed.join(" ")})`);
  }
  // Narrow, with the details open too.
  await page.goto(`${url}/#workflows`);
  await page.click(`[data-run="${run.id}"]`);
  await page.locator("[data-testid=run-status]").waitFor();
  await page.screenshot({ path: join(shots, "workflows-narrow.png") });
  let wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `a run's steps fit a 390 px screen (${wide} px)`);
  await page.goto(`${url}/#tasks`);
  await page.click(`[data-task="${root.id}"] button.link`);
  await page.locator(".attempts tbody tr").first().waitFor();
  wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `a task's attempts fit a 390 px screen (${wide} px)`);

  // Signed in again in another tab: this tab's CSRF token is the old
  // session's, and acting from it asks to sign in again.
  await page.setViewportSize({ width: 1280, height: 800 });
  const sleeper = await api("POST", "/tasks", { handler: "sleep", input: { ms: 600000 } });
  await page.goto(`${url}/#tasks`);
  const cancelSleeper = page.locator(`button[aria-label="Cancel task ${sleeper.id}"]`);
  await cancelSleeper.waitFor();
  const again = await context.request.post(`${url}/auth/session`, { data: { token } });
  check(again.ok(), "signed in again beside the page (another tab)");
  await cancelSleeper.click();
  await page.locator("#status", { hasText: "sign in again to act from this tab" }).waitFor();
  check(true, "signed in again in another tab, acting from this one asks to sign in again");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.locator("header nav").waitFor();
  await api("POST", `/tasks/${sleeper.id}/cancel`);

  // The server gone: the page says so (and keeps trying).
  await page.goto(`${url}/#timeline`);
  await page.locator("[data-testid=link][data-state=live]").waitFor();
  await page.locator(".row .type").last().waitFor();
  process.kill(serverPid, "SIGKILL");
  await page.locator("[data-testid=link][data-state=reconnecting]").waitFor();
  check(true, "the server killed, the page says it is unreachable");
  await page.screenshot({ path: join(shots, "unreachable.png") });
} finally {
  await browser.close();
}
