// One event whole: its envelope, its JSON, what caused it (its causation
// chain, nearest first) and what it caused — from `/events/{seq}/related`,
// which the timeline's read model answers.

import { useEffect, useState } from "preact/hooks";
import { get, type LogEvent } from "./api";
import { clock } from "./format";
import { html } from "./html";

/** `/events/{seq}/related`. */
interface Related {
  event: LogEvent;
  causes: LogEvent[];
  effects: LogEvent[];
  indexed: number;
}

/** The event numbered `seq`, whole; `onSelect` opens another one. */
export function EventDetail({
  seq,
  onSelect,
  onError,
}: {
  seq: number;
  onSelect: (seq: number) => void;
  onError: (e: unknown) => void;
}) {
  const [related, setRelated] = useState<Related | null>(null);
  useEffect(() => {
    // A late answer for an event no longer shown is dropped.
    let shown = true;
    setRelated(null);
    get<Related>(`/events/${seq}/related`)
      .then((r) => shown && setRelated(r))
      .catch((e) => shown && onError(e));
    return () => {
      shown = false;
    };
  }, [seq]);
  if (!related) return html`<p class="hint">…</p>`;
  const e = related.event;
  const link = (r: LogEvent) => html`<li key=${r.seq}>
    <button type="button" class="link" onClick=${() => onSelect(r.seq)}>#${r.seq} ${r.type}</button>
    <span class="muted">${r.stream} · ${clock(r.recorded_at)}</span>
  </li>`;
  return html`
    <h2>#${e.seq} ${e.type}</h2>
    <dl>
      <dt>stream</dt><dd>${e.stream} (version ${e.stream_version})</dd>
      <dt>recorded</dt><dd>${e.recorded_at}</dd>
      <dt>correlation</dt><dd>${e.correlation_id}</dd>
      <dt>caused by</dt><dd>${e.causation_id ?? "—"}</dd>
      <dt>hash</dt><dd class="hash">${e.hash}</dd>
    </dl>
    <pre data-testid="event-json">${JSON.stringify(e.event, null, 2)}</pre>
    <h3>causes</h3>
    ${related.causes.length === 0
      ? html`<p class="muted">none recorded</p>`
      : html`<ol class="related" data-testid="causes">${related.causes.map(link)}</ol>`}
    <h3>effects</h3>
    ${related.effects.length === 0
      ? html`<p class="muted">none recorded (the index has read the log to #${related.indexed})</p>`
      : html`<ol class="related" data-testid="effects">${related.effects.map(link)}</ol>`}
  `;
}
