// Overview: how busy the kernel is, as small live charts of the last
// minute — events committed per second, tasks ended per second (by how
// they ended) and tokens per second, counted from the event stream — and
// the tasks by state now (pending, running: `/metrics`' `lion_tasks`,
// read every two seconds).

import { useEffect, useState } from "preact/hooks";
import { getText } from "./api";
import { body } from "./format";
import { html } from "./html";
import { onEvent } from "./live";

/** Seconds each chart shows. */
const SPAN = 60;

/** What is counted each second. */
interface Second {
  events: number;
  completed: number;
  failed: number;
  cancelled: number;
  tokens: number;
}

const empty = (): Second => ({ events: 0, completed: 0, failed: 0, cancelled: 0, tokens: 0 });

/** The last minute, a second at a time, counted from the page's start
 * (whatever view is open), and the second being counted. */
const seconds: Second[] = Array.from({ length: SPAN }, empty);
let current = empty();
const redraws = new Set<() => void>();

onEvent((e) => {
  current.events += 1;
  const b = body(e);
  if (e.type === "task_completed") current.completed += 1;
  if ((e.type === "task_failed" || e.type === "task_timed_out") && b.final) current.failed += 1;
  if (e.type === "task_cancelled") current.cancelled += 1;
  if (e.type === "llm_finished") {
    const usage = (b.usage ?? {}) as Record<string, number>;
    current.tokens += (usage.prompt_tokens ?? 0) + (usage.completion_tokens ?? 0);
  }
});
setInterval(() => {
  seconds.shift();
  seconds.push(current);
  current = empty();
  for (const redraw of redraws) redraw();
}, 1000);

/** How often the tasks by state are read, in milliseconds. */
const STATES_EVERY = 2000;

/** The unfinished tasks by state in a `/metrics` text. */
function unfinished(metrics: string): Record<string, number> {
  const out: Record<string, number> = { pending: 0, running: 0 };
  for (const m of metrics.matchAll(/^lion_tasks\{state="(\w+)"\} (\d+)/gm)) out[m[1]] = Number(m[2]);
  return out;
}

/** The Overview view. */
export function Overview({ onError }: { onError: (e: unknown) => void }) {
  const [, setTick] = useState(0);
  const [states, setStates] = useState<Record<string, number> | null>(null);
  useEffect(() => {
    const redraw = () => setTick((t) => t + 1);
    redraws.add(redraw);
    const read = () =>
      getText("/metrics")
        .then((text) => setStates(unfinished(text)))
        .catch(onError);
    read();
    const timer = setInterval(read, STATES_EVERY);
    return () => {
      redraws.delete(redraw);
      clearInterval(timer);
    };
  }, []);

  const last = seconds[seconds.length - 1];
  const total = (key: keyof Second) => seconds.reduce((n, s) => n + s[key], 0);
  return html`
    <section class="page overview" aria-label="Overview">
      <figure class="chart" data-testid="task-states">
        <figcaption>tasks by state now</figcaption>
        ${states
          ? html`<dl class="states">
              <dt>pending</dt><dd>${states.pending}</dd>
              <dt>running</dt><dd>${states.running}</dd>
              <dt>ended, last minute</dt><dd>${total("completed")} completed · ${total("failed")} failed · ${total("cancelled")} cancelled</dd>
            </dl>`
          : html`<p class="muted">…</p>`}
      </figure>
      <${Chart} title="events/s" values=${seconds.map((s) => s.events)} now=${last.events} testid="events-chart" />
      <${Chart} title="tasks ended/s" values=${seconds.map((s) => s.completed + s.failed + s.cancelled)}
        now=${last.completed + last.failed + last.cancelled}
        note=${`last minute: ${total("completed")} completed, ${total("failed")} failed, ${total("cancelled")} cancelled`} />
      <${Chart} title="tokens/s" values=${seconds.map((s) => s.tokens)} now=${last.tokens} />
    </section>
  `;
}

/** A fixed-size line chart of the last minute, with the latest value. */
function Chart({ title, values, now, note, testid }: { title: string; values: number[]; now: number; note?: string; testid?: string }) {
  const w = 300;
  const h = 64;
  const top = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - (v / top) * (h - 4) - 2}`).join(" ");
  return html`
    <figure class="chart" data-testid=${testid}>
      <figcaption><strong>${now}</strong> ${title} <span class="muted">(peak ${top === 1 && values.every((v) => v === 0) ? 0 : top})</span></figcaption>
      <svg width=${w} height=${h} viewBox=${`0 0 ${w} ${h}`} role="img" aria-label=${`${title}, last minute`}>
        <polyline points=${points} />
      </svg>
      ${note && html`<figcaption class="muted">${note}</figcaption>`}
    </figure>
  `;
}
