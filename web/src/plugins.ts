// Plugins: each installed plugin with its sandbox, state and call counts,
// what it asks for beside what it was granted, and its recent calls,
// failures, denials and quarantine from its stream — a denial shown with
// what was refused and why. Live from the event stream.

import { useEffect, useRef, useState } from "preact/hooks";
import { get, type EventPage, type LogEvent } from "./api";
import { body, clock } from "./format";
import { html } from "./html";
import { onEvent } from "./live";
import { rereader } from "./reread";

/** A plugin as `/plugins` gives it. */
interface Plugin {
  name: string;
  version: string;
  description: string;
  kind: string;
  status: string;
  calls: number;
  succeeded: number;
  failed: number;
  asked: unknown;
  grant: unknown;
}

/** The events of a plugin's stream shown, newest first. */
const SHOWN = 200;

/** The Plugins view. */
export function Plugins({ onError }: { onError: (e: unknown) => void }) {
  const [plugins, setPlugins] = useState<Plugin[]>([]);
  const [selected, setSelected] = useState<string | null>(null);
  // Bumped when the selected plugin's stream moved.
  const [moved, setMoved] = useState(0);
  const selectedRef = useRef(selected);
  selectedRef.current = selected;

  // The list, read again as plugins' events come: one read at a time, a
  // few times a second at most.
  const [reader] = useState(() =>
    rereader(() =>
      get<{ items: Plugin[] }>("/plugins?limit=200")
        .then((page) => setPlugins(page.items))
        .catch(onError),
    ),
  );
  useEffect(() => {
    reader.mark("list");
    const unwatch = onEvent((e) => {
      if (!e.stream.startsWith("plugin:")) return;
      reader.mark("list");
      if (e.stream === `plugin:${selectedRef.current}`) setMoved((m) => m + 1);
    });
    return () => {
      unwatch();
      reader.stop();
    };
  }, []);

  const chosen = plugins.find((p) => p.name === selected);
  return html`
    <section class="plugins split" aria-label="Plugins">
      <div class="list">
        ${plugins.length === 0 && html`<p class="hint">No plugin installed (<code>lion plugin install</code>).</p>`}
        <ul class="runs" aria-label="Installed plugins">
          ${plugins.map(
            (p) => html`<li key=${p.name}>
              <button type="button" class=${`link${selected === p.name ? " selected" : ""}`} data-plugin=${p.name}
                      onClick=${() => setSelected(p.name)}>${p.name}</button>
              <span class="muted">${p.kind} ${p.version}</span>
              <span class=${`status status-${p.status === "active" ? "completed" : "failed"}`}>${p.status}</span>
              <span class="muted">${p.calls} calls, ${p.failed} failed</span>
            </li>`,
          )}
        </ul>
      </div>
      <aside class="detail" aria-label="Plugin">
        ${chosen
          ? html`<${PluginDetail} key=${chosen.name} plugin=${chosen} moved=${moved} onError=${onError} />`
          : html`<p class="hint">Select a plugin to see its grants, calls and denials.</p>`}
      </aside>
    </section>
  `;
}

/** A plugin's grants and its stream's events. */
function PluginDetail({ plugin, moved, onError }: { plugin: Plugin; moved: number; onError: (e: unknown) => void }) {
  const [events, setEvents] = useState<LogEvent[]>([]);
  // Its stream's newest events, read again as it moves (one read at a
  // time: a late answer never replaces a newer one).
  const [reader] = useState(() =>
    rereader(() =>
      get<EventPage>(`/streams/${encodeURIComponent(`plugin:${plugin.name}`)}/events?last=true&limit=${SHOWN}`)
        .then((page) => setEvents(page.items.reverse()))
        .catch(onError),
    ),
  );
  useEffect(() => reader.mark(plugin.name), [moved]);
  useEffect(() => reader.stop, []);
  return html`
    <h2>${plugin.name} <span class="muted">${plugin.kind} ${plugin.version}</span></h2>
    <p>${plugin.description}</p>
    <div class="grants">
      <div><h3>asks for</h3><pre>${JSON.stringify(plugin.asked, null, 2)}</pre></div>
      <div><h3>granted</h3><pre>${JSON.stringify(plugin.grant, null, 2)}</pre></div>
    </div>
    <h3>calls, failures and denials</h3>
    <ul class="plugin-events">
      ${events.map((e) => {
        const b = body(e);
        const denied = e.type === "plugin_permission_denied";
        return html`<li key=${e.seq} class=${denied ? "denied" : e.type === "plugin_failed" ? "failed" : ""}
                        data-type=${e.type}>
          <span class="muted">#${e.seq} ${clock(e.recorded_at)}</span>
          <strong>${e.type.replace("plugin_", "")}</strong>
          ${denied && html`<span>refused <code>${String(b.asked)}</code>: ${String(b.reason)}</span>`}
          ${e.type === "plugin_invoked" && html`<span>${String(b.function)}</span>`}
          ${e.type === "plugin_failed" && html`<span class="error-text">${JSON.stringify(b.failure)}</span>`}
          ${e.type === "plugin_quarantined" && html`<span class="error-text">${String(b.reason)}</span>`}
          ${e.type === "plugin_succeeded" && html`<span class="muted">${Number(b.micros) / 1000} ms</span>`}
        </li>`;
      })}
    </ul>
  `;
}
