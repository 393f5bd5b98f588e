// The timeline filtered: the events that match, newest first, read a page
// at a time from `/timeline` (the timeline's read model) as the list is
// scrolled to its end, and new matching events added as they stream in.

import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { get, type Health, type LogEvent } from "./api";
import { body, clock } from "./format";
import { html } from "./html";
import { onEvent } from "./live";

/** The filters of the timeline, as `/timeline` takes them. */
export interface Filters {
  type: string;
  stream: string;
  correlation_id: string;
  since: string;
  until: string;
}

/** Whether no filter is set. */
export const unfiltered = (f: Filters) => Object.values(f).every((v) => v.trim() === "");

/** Height of one row, in CSS pixels (as the timeline's). */
const ROW = 28;
/** Events read per page. */
const PAGE = 200;
/** Most matching events the list holds (it asks for no more pages past
 * this; new ones still come in at the top, the oldest go). */
const MOST = 5000;

/** Whether event `e` passes `f` (for events that stream in). */
function passes(e: LogEvent, f: Filters): boolean {
  const at = Date.parse(e.recorded_at);
  return (
    (!f.type || e.type === f.type) &&
    (!f.stream || e.stream.startsWith(f.stream)) &&
    (!f.correlation_id || e.correlation_id === f.correlation_id.trim().toLowerCase()) &&
    (!f.since || at >= Date.parse(f.since)) &&
    (!f.until || at < Date.parse(f.until))
  );
}

/** The matching events; `onSelect` opens one. */
export function Matches({
  filters,
  selected,
  onSelect,
  onError,
}: {
  filters: Filters;
  selected: number | null;
  onSelect: (seq: number) => void;
  onError: (e: unknown) => void;
}) {
  const [items, setItems] = useState<LogEvent[]>([]);
  const [next, setNext] = useState<number | null | undefined>(undefined);
  const [indexed, setIndexed] = useState(0);
  const loading = useRef(false);
  const box = useRef<HTMLDivElement>(null);
  // Matches that streamed in above a reader scrolled down: the list moves
  // down by as many rows, so the rows in view stay put.
  const added = useRef(0);

  const query = (before?: number) => {
    const params = new URLSearchParams({ limit: String(PAGE) });
    for (const [k, v] of Object.entries(filters)) if (v.trim()) params.set(k, v.trim());
    if (before) params.set("before", String(before));
    return `/timeline?${params}`;
  };

  const more = (before?: number) => {
    if (loading.current) return Promise.resolve(0);
    loading.current = true;
    return get<{ items: LogEvent[]; next?: number; indexed: number }>(query(before))
      .then((page) => {
        setItems((old) => {
          const seen = new Set<number>();
          return [...old, ...page.items]
            .filter((e) => !seen.has(e.seq) && seen.add(e.seq))
            .sort((a, b) => b.seq - a.seq)
            .slice(0, MOST);
        });
        // A first page read again keeps the paging already done.
        if (before || next === undefined) setNext(page.next ?? null);
        setIndexed(page.indexed);
        return page.indexed;
      })
      .catch((e) => {
        onError(e);
        return 0;
      })
      .finally(() => (loading.current = false));
  };

  useEffect(() => {
    setItems([]);
    let closed = false;
    // The read model follows the log a little behind: the first page is
    // read again until it has caught up with the head the filter was set at.
    const first = async () => {
      const { head_seq } = await get<Health>("/health");
      for (let tries = 0; tries < 20 && !closed; tries++) {
        if ((await more()) >= head_seq) return;
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    first().catch(onError);
    const stop = onEvent((e) => {
      if (!passes(e, filters)) return;
      setItems((old) => {
        if (old.some((o) => o.seq === e.seq)) return old;
        if ((box.current?.scrollTop ?? 0) > 0) added.current++;
        return [e, ...old].slice(0, MOST);
      });
    });
    return () => {
      closed = true;
      stop();
    };
  }, [JSON.stringify(filters)]);

  useLayoutEffect(() => {
    if (added.current > 0 && box.current) box.current.scrollTop += added.current * ROW;
    added.current = 0;
  }, [items]);

  // Keyboard: arrows (or j/k), Home and End open the next match.
  const onKey = (k: KeyboardEvent) => {
    if (items.length === 0) return;
    const at = items.findIndex((e) => e.seq === selected);
    const to: Record<string, number> = {
      ArrowDown: at + 1,
      j: at + 1,
      ArrowUp: at - 1,
      k: at - 1,
      Home: 0,
      End: items.length - 1,
    };
    if (!(k.key in to)) return;
    k.preventDefault();
    // Nothing opened yet: the keys start at the newest (End: the oldest).
    const want = at < 0 ? (k.key === "End" ? items.length - 1 : 0) : to[k.key];
    const next = items[Math.min(items.length - 1, Math.max(0, want))];
    onSelect(next.seq);
    document.getElementById(`match-${next.seq}`)?.scrollIntoView({ block: "nearest" });
  };

  const onScroll = (s: Event) => {
    const box = s.target as HTMLElement;
    if (next && items.length < MOST && box.scrollTop + box.clientHeight >= box.scrollHeight - 200) more(next);
  };

  return html`
    <div class="matches-pane">
      <p class="muted" data-testid="matches">${items.length}${next ? "+" : ""} matching events (newest first; the index has read the log to #${indexed})</p>
      <div class="scroller matches" tabIndex="0" role="listbox" aria-label="Matching events, newest first" ref=${box}
           aria-activedescendant=${selected !== null && items.some((e) => e.seq === selected) ? `match-${selected}` : undefined}
           onScroll=${onScroll} onKeyDown=${onKey}>
        ${items.map(
          (e) => html`<div key=${e.seq} id=${`match-${e.seq}`} role="option" aria-selected=${selected === e.seq}
              class=${`row static${selected === e.seq ? " selected" : ""}`}
              onClick=${() => onSelect(e.seq)}>
            <span class="seq">${e.seq}</span>
            <span class="time">${clock(e.recorded_at)}</span>
            <span class="type">${e.type}</span>
            <span class="stream">${e.stream}</span>
            <span class="summary">${JSON.stringify(body(e)).slice(0, 160)}</span>
          </div>`,
        )}
      </div>
      ${next && items.length < MOST && html`<button type="button" class="more" onClick=${() => more(next)}>older…</button>`}
    </div>
  `;
}
