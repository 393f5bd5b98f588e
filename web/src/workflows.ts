// Workflows: each run's DAG with its steps' states, times and outputs,
// approvals waiting for a person (approve or reject here), and where a
// run came from (a fork, or the step of a parent run). Live from the
// event stream.

import { useEffect, useRef, useState } from "preact/hooks";
import { get, post } from "./api";
import { short, took } from "./format";
import { idOf, newest, withFirstPage, withItem } from "./newest";
import { html } from "./html";
import { onEvent } from "./live";
import { rereader } from "./reread";

/** A run as `/workflows` lists it. */
interface RunSummary {
  id: string;
  name: string;
  status: string;
  started_at: string;
  origin?: Origin;
}

/** What started a run, when another run did. */
interface Origin {
  type: string;
  run: string;
  step?: string;
  from?: string;
}

/** One step as `/workflows/{id}` shows it. */
interface Step {
  state: string;
  kind: string;
  after: string[];
  output?: unknown;
  error?: string;
  deadline?: string;
  due?: string;
  items?: number;
  done?: number;
}

/** A run as `/workflows/{id}` shows it. */
interface RunView extends RunSummary {
  steps: Record<string, Step>;
  output?: unknown;
  error?: string;
}

/** One event of a run's history. */
interface HistoryEntry {
  seq: number;
  recorded_at: string;
  event: { type: string; step?: string };
}

/** Runs listed (the newest). */
const RUNS = 100;

/** A step box's size and the gaps between boxes, in pixels. */
const BOX = { w: 190, h: 74, gapX: 56, gapY: 14 };

/** Where each step's box goes: its column is how deep it is in the DAG. */
function layout(steps: Record<string, Step>) {
  const depth = new Map<string, number>();
  const of = (id: string, seen = new Set<string>()): number => {
    if (depth.has(id)) return depth.get(id)!;
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...(steps[id]?.after ?? []).filter((a) => a in steps).map((a) => of(a, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  const rows: number[] = [];
  const at = new Map<string, { x: number; y: number }>();
  for (const id of Object.keys(steps)) {
    const d = of(id);
    const row = rows[d] ?? 0;
    rows[d] = row + 1;
    at.set(id, { x: d * (BOX.w + BOX.gapX), y: row * (BOX.h + BOX.gapY) });
  }
  const width = Math.max(1, rows.length) * (BOX.w + BOX.gapX);
  const height = Math.max(1, ...rows) * (BOX.h + BOX.gapY);
  return { at, width, height };
}

/** The steps of `run` waiting for a person's decision. */
const waitingSteps = (run: RunView) =>
  Object.entries(run.steps)
    .filter(([, step]) => step.state === "waiting for approval")
    .map(([id]) => id);

/** The Workflows view. */
export function Workflows({ onError }: { onError: (e: unknown) => void }) {
  const [runs, setRuns] = useState<RunView[]>([]);
  const [selected, setSelected] = useState<string | null>(null);
  const [times, setTimes] = useState<Record<string, [string, string]>>({});
  const [moved, setMoved] = useState(0);
  const selectedRef = useRef(selected);
  selectedRef.current = selected;
  const run = runs.find((r) => r.id === selected) ?? null;

  // A run is read one request at a time, a few times a second at most,
  // however many events it records; a new one goes first, the oldest past
  // the list's length is let go.
  const [reader] = useState(() =>
    rereader((id) =>
      get<RunView>(`/workflows/${id}`)
        .then((read) =>
          // The oldest go past the list's length, never the open run.
          setRuns((old) => withItem(old, read, (r) => r.id, RUNS, selectedRef.current)),
        )
        .catch(onError),
    ),
  );

  // The newest runs (their starts, newest first), each read for its state
  // (one read live meanwhile is newer, and kept); then every run's event
  // has its run read again.
  useEffect(() => {
    newest("workflow:", null, RUNS)
      .then(({ events }) => Promise.all(events.map((e) => get<RunView>(`/workflows/${idOf(e.stream)}`))))
      .then((read) =>
        setRuns((old) => withFirstPage(old, read, (r) => r.id)),
      )
      .catch(onError);
    const unwatch = onEvent((e) => {
      if (e.type !== "workflow_recorded") return;
      const id = idOf(e.stream);
      reader.mark(id);
      if (id === selectedRef.current) setMoved((m) => m + 1);
    });
    return () => {
      unwatch();
      reader.stop();
    };
  }, []);

  // The open run's history, for its steps' timings: read again as the
  // run moves, one read at a time, and kept only while that run is open.
  const [history] = useState(() =>
    rereader((id) =>
      get<HistoryEntry[]>(`/workflows/${id}/history`)
        .then((entries) => {
          if (id !== selectedRef.current) return;
          const spans: Record<string, [string, string]> = {};
          for (const h of entries) {
            const step = h.event.step;
            if (!step) continue;
            spans[step] = [spans[step]?.[0] ?? h.recorded_at, h.recorded_at];
          }
          setTimes(spans);
        })
        .catch(onError),
    ),
  );
  useEffect(() => {
    setTimes({});
    if (selected) history.mark(selected);
  }, [selected]);
  useEffect(() => {
    if (selected && moved > 0) history.mark(selected);
  }, [moved]);
  useEffect(() => history.stop, []);

  const decide = (id: string, step: string, approve: boolean) =>
    post(`/workflows/${id}/steps/${encodeURIComponent(step)}/${approve ? "approve" : "reject"}`, {})
      .then(() => reader.mark(id))
      .catch(onError);

  // Opens run `id` (read first when it is not listed: a fork's origin).
  const select = (id: string) => {
    setSelected(id);
    if (!runs.some((r) => r.id === id)) reader.mark(id);
  };

  const asking = runs.flatMap((r) => waitingSteps(r).map((step) => [r, step] as const));
  return html`
    <section class="workflows split" aria-label="Workflows">
      <div class="list">
        ${asking.length > 0 &&
        html`<h2>Waiting for a decision</h2>
          <ul class="approvals" aria-label="Approvals waiting">
            ${asking.map(
              ([r, step]) => html`<li key=${`${r.id}/${step}`} data-approval=${`${r.id}/${step}`}>
                <button type="button" class="link" onClick=${() => select(r.id)}>${r.name} ${short(r.id)}</button>
                <span>step <strong>${step}</strong></span>
                <button type="button" aria-label=${`Approve ${step} of ${r.name} ${short(r.id)}`}
                        onClick=${() => decide(r.id, step, true)}>approve</button>
                <button type="button" aria-label=${`Reject ${step} of ${r.name} ${short(r.id)}`}
                        onClick=${() => decide(r.id, step, false)}>reject</button>
              </li>`,
            )}
          </ul>`}
        ${runs.length === 0 && html`<p class="hint">No workflow run yet (<code>lion workflow run FILE</code>).</p>`}
        <ul class="runs" aria-label="Runs">
          ${runs.map(
            (r) => html`<li key=${r.id}>
              <button type="button" class=${`link${selected === r.id ? " selected" : ""}`} data-run=${r.id}
                      aria-label=${`Run ${r.name} ${short(r.id)}`} onClick=${() => select(r.id)}>
                ${r.name}</button>
              <span class=${`status status-${r.status}`}>${r.status}</span>
              ${waitingSteps(r).length > 0 && html`<span class="status status-waiting">waiting for approval</span>`}
              <span class="muted">${short(r.id)} · ${r.started_at.slice(11, 19)}</span>
              ${r.origin &&
              html`<button type="button" class="link muted" aria-label=${`Open run ${short(r.origin.run)}`}
                           onClick=${() => select(r.origin!.run)}>${origin(r.origin)}</button>`}
            </li>`,
          )}
        </ul>
      </div>
      <div class="detail run">
        ${run
          ? html`<${Dag} run=${run} times=${times} decide=${(step: string, approve: boolean) => decide(run.id, step, approve)} />`
          : selected
            ? html`<p class="hint">…</p>`
            : html`<p class="hint">Select a run to see its steps.</p>`}
      </div>
    </section>
  `;
}

/** Where a run came from, in words. */
function origin(o: Origin): string {
  return o.type === "fork" ? `forked from ${short(o.run)} at ${o.from}` : `step ${o.step} of ${short(o.run)}`;
}

/** The run's steps as a DAG: a box per step, columns by depth, an arrow
 * from each step to those that run after it. */
function Dag({
  run,
  times,
  decide,
}: {
  run: RunView;
  times: Record<string, [string, string]>;
  decide: (step: string, approve: boolean) => void;
}) {
  const { at, width, height } = layout(run.steps);
  const edges = [];
  for (const [id, step] of Object.entries(run.steps)) {
    const to = at.get(id)!;
    for (const dep of step.after) {
      const from = at.get(dep);
      if (!from) continue;
      const x1 = from.x + BOX.w;
      const y1 = from.y + BOX.h / 2;
      const x2 = to.x;
      const y2 = to.y + BOX.h / 2;
      const mid = (x1 + x2) / 2;
      edges.push(html`<path key=${`${dep}-${id}`} d=${`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`} />`);
    }
  }
  const duration = (id: string) => (times[id] ? took(times[id][0], times[id][1]) : "");
  return html`
    <h2>${run.name} <span class=${`status status-${run.status}`} data-testid="run-status">${run.status}</span></h2>
    <p class="muted">${run.id}${run.origin ? ` · ${origin(run.origin)}` : ""}</p>
    ${run.error && html`<p class="error-text">${run.error}</p>`}
    <div class="dag" style=${{ width: `${width}px`, height: `${height}px` }}>
      <svg width=${width} height=${height} aria-hidden="true">${edges}</svg>
      ${Object.entries(run.steps).map(([id, step]) => {
        const p = at.get(id)!;
        return html`<div key=${id} class=${`step state-${step.state.replace(/ /g, "-")}`} data-step=${id}
            style=${{ transform: `translate(${p.x}px, ${p.y}px)` }}>
          <strong>${id}</strong> <span class="muted">${step.kind}</span>
          <div>${step.state}${step.items !== undefined ? ` ${step.done}/${step.items}` : ""} <span class="muted">${duration(id)}</span></div>
          ${step.state === "waiting for approval" &&
          html`<div class="decide">
            <button type="button" aria-label=${`Approve ${id}`} onClick=${() => decide(id, true)}>approve</button>
            <button type="button" aria-label=${`Reject ${id}`} onClick=${() => decide(id, false)}>reject</button>
          </div>`}
          ${step.error && html`<div class="error-text" title=${step.error}>${step.error}</div>`}
          ${step.output !== undefined && step.state !== "waiting for approval" &&
          html`<div class="muted output" title=${JSON.stringify(step.output)}>${JSON.stringify(step.output)}</div>`}
        </div>`;
      })}
    </div>
    ${run.output !== undefined && html`<h3>output</h3><pre>${JSON.stringify(run.output, null, 2)}</pre>`}
  `;
}
