// Tasks: each task tree (a task and the children it started) with states,
// attempts and errors, kept live from the event stream; a task's attempts
// with their times and failures; cancel from the page (the whole tree).

import { useEffect, useRef, useState } from "preact/hooks";
import { get, post, type EventPage, type LogEvent } from "./api";
import { body, clock, short, took } from "./format";
import { idOf, newest } from "./newest";
import { html } from "./html";
import { onEvent } from "./live";
import { rereader } from "./reread";

/** A task as `/tasks` gives it. */
export interface Task {
  id: string;
  handler: string;
  status: string;
  attempts: number;
  output?: unknown;
  error?: string;
  parent?: string;
  children: string[];
}

/** Task trees read per page. */
const PAGE = 50;

/** Whether a status is an end. */
const ended = (status: string) => ["completed", "failed", "cancelled", "timed_out"].includes(status);

/** Task trees kept from the live stream beyond those asked for: the
 * oldest are let go (a page open all day must not keep every task). */
const KEPT_TREES = 200;

/** The Tasks view. */
export function Tasks({ onError }: { onError: (e: unknown) => void }) {
  const [tasks, setTasks] = useState(() => new Map<string, Task>());
  const [selected, setSelected] = useState<string | null>(null);
  const [older, setOlder] = useState<number | undefined>(undefined);
  // Trees kept: the first page, and every older page asked for.
  const [kept, setKept] = useState(KEPT_TREES);
  // Every task the view reads or has read: its events have it read again
  // (one asked for and not answered yet included, so no end is missed).
  const wanted = useRef(new Set<string>());

  // Tasks are read one request at a time each, a few times a second at
  // most, however many events they have.
  const [reader] = useState(() =>
    rereader((id) =>
      get<Task>(`/tasks/${id}`)
        .then((task) => {
          // A tree let go while its read ran stays gone.
          if (!wanted.current.has(task.id)) return;
          setTasks((old) => {
            const next = new Map(old);
            next.set(task.id, task);
            return next;
          });
        })
        .catch(onError),
    ),
  );
  const want = (id: string) => {
    wanted.current.add(id);
    reader.mark(id);
  };

  // The newest task trees: the newest submissions without a parent.
  const load = (before?: number) =>
    newest("task:", "task_submitted", PAGE, before)
      .then(({ events, next }) => {
        setOlder(next);
        if (before) setKept((k) => k + PAGE);
        for (const e of events) {
          if (!(body(e).spec as { parent?: string } | undefined)?.parent) want(idOf(e.stream));
        }
      })
      .catch(onError);

  useEffect(() => {
    load();
    // A task shown changes with its events; a new task without a parent
    // is a new tree; a new child changes its parent's list of children.
    const unwatch = onEvent((e) => {
      if (!e.stream.startsWith("task:")) return;
      const id = idOf(e.stream);
      if (e.type === "task_submitted") {
        const parent = (body(e).spec as { parent?: string } | undefined)?.parent;
        if (!parent) want(id);
        else if (wanted.current.has(parent)) {
          want(parent);
          want(id);
        }
      } else if (wanted.current.has(id)) {
        want(id);
      }
    });
    return () => {
      unwatch();
      reader.stop();
    };
  }, []);

  // Children not yet read are read (a tree opened from the list); trees
  // past the ones kept are let go, the oldest first.
  useEffect(() => {
    for (const task of tasks.values()) {
      for (const child of task.children) if (!wanted.current.has(child)) want(child);
    }
    const trees = [...tasks.values()].filter((t) => !t.parent).sort((a, b) => (a.id < b.id ? 1 : -1));
    if (trees.length > kept) {
      const gone = new Set<string>();
      const drop = (id: string) => {
        gone.add(id);
        for (const child of tasks.get(id)?.children ?? []) drop(child);
      };
      for (const tree of trees.slice(kept)) if (tree.id !== selected) drop(tree.id);
      for (const id of gone) wanted.current.delete(id);
      if (gone.size > 0) setTasks((old) => new Map([...old].filter(([id]) => !gone.has(id))));
    }
  }, [tasks, kept]);

  // Newest first (task ids are time-ordered).
  const roots = [...tasks.values()]
    .filter((t) => !t.parent || !tasks.has(t.parent))
    .sort((a, b) => (a.id < b.id ? 1 : -1));
  const chosen = selected ? tasks.get(selected) : undefined;

  const cancel = (id: string) => post(`/tasks/${id}/cancel`).catch(onError);

  const node = (task: Task, depth: number): unknown => html`
    <li key=${task.id} aria-current=${selected === task.id ? "true" : undefined}>
      <div class=${`task${selected === task.id ? " selected" : ""}`} data-task=${task.id}
           data-status=${task.status} style=${{ paddingLeft: `${depth * 1.25 + 0.5}rem` }}>
        <button type="button" class="link" aria-label=${`Open task ${task.handler} ${short(task.id)}`}
                onClick=${() => setSelected(task.id)}>${task.handler}</button>
        <span class=${`status status-${task.status}`}>${task.status}</span>
        <span class="muted">attempt ${task.attempts}</span>
        <span class="muted">${short(task.id)}</span>
        ${task.error && html`<span class="error-text">${task.error}</span>`}
        ${!ended(task.status) &&
        html`<button type="button" aria-label=${`Cancel task ${task.id}`} onClick=${() => cancel(task.id)}>cancel</button>`}
      </div>
      ${task.children.length > 0 &&
      html`<ul aria-label=${`Children of ${task.handler} ${short(task.id)}`}>
        ${task.children.map((c) => {
          const child = tasks.get(c);
          return child ? node(child, depth + 1) : html`<li key=${c} class="muted">${short(c)} …</li>`;
        })}
      </ul>`}
    </li>
  `;

  return html`
    <section class="tasks split" aria-label="Tasks">
      <div class="list">
        ${roots.length === 0 && html`<p class="hint">No task yet.</p>`}
        <ul aria-label="Task trees, newest first">${roots.map((t) => node(t, 0))}</ul>
        ${older && html`<button type="button" class="more" onClick=${() => load(older)}>older task trees…</button>`}
      </div>
      <aside class="detail" aria-label="Task">
        ${chosen ? html`<${TaskDetail} task=${chosen} onError=${onError} />` : html`<p class="hint">Select a task to see its attempts.</p>`}
      </aside>
    </section>
  `;
}

/** One attempt of a task, from its events. */
interface Attempt {
  n: number;
  started: string;
  ended?: string;
  how?: string;
  error?: string;
}

/** A task's attempts, timings and failures, from its stream's events. */
function TaskDetail({ task, onError }: { task: Task; onError: (e: unknown) => void }) {
  const [events, setEvents] = useState<LogEvent[]>([]);
  useEffect(() => {
    get<EventPage>(`/streams/task:${task.id}/events?limit=1000`)
      .then((page) => setEvents(page.items))
      .catch(onError);
  }, [task.id, task.status, task.attempts]);
  const attempts: Attempt[] = [];
  for (const e of events) {
    const b = body(e);
    if (e.type === "task_started") attempts.push({ n: Number(b.attempt), started: e.recorded_at });
    const last = attempts[attempts.length - 1];
    if (!last || e.type === "task_started" || e.type === "task_progress") continue;
    last.ended = e.recorded_at;
    last.how = e.type.replace("task_", "");
    if (typeof b.error === "string") last.error = b.error;
  }
  const duration = (a: Attempt) => (a.ended ? took(a.started, a.ended) : "running");
  return html`
    <h2>${task.handler} <span class=${`status status-${task.status}`}>${task.status}</span></h2>
    <dl>
      <dt>id</dt><dd>${task.id}</dd>
      <dt>parent</dt><dd>${task.parent ?? "—"}</dd>
      <dt>children</dt><dd>${task.children.length}</dd>
    </dl>
    <table class="attempts">
      <thead><tr><th>attempt</th><th>started</th><th>took</th><th>ended</th><th>error</th></tr></thead>
      <tbody>
        ${attempts.map(
          (a) => html`<tr key=${a.n}><td>${a.n}</td><td>${clock(a.started)}</td><td>${duration(a)}</td>
            <td>${a.how ?? ""}</td><td class="error-text">${a.error ?? ""}</td></tr>`,
        )}
      </tbody>
    </table>
    ${task.output !== undefined && html`<pre>${JSON.stringify(task.output, null, 2)}</pre>`}
  `;
}
