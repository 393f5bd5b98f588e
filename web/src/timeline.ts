// The timeline: every event of the log, newest at the bottom, in a list
// that renders only the rows in view (a million-event log scrolls like a
// short one), fetched a page at a time by sequence number and kept live by
// the server's event stream. A click (or Enter) opens an event's JSON.

import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { get, type EventPage, type Health, type LogEvent } from "./api";
import { EventDetail } from "./event";
import { body, clock } from "./format";
import { html } from "./html";
import { onEvent } from "./live";
import { Matches, unfiltered, type Filters } from "./matches";

/** Height of one row, in CSS pixels: fixed, so streaming never shifts rows. */
const ROW = 28;
/** Events fetched per page. */
const PAGE = 200;
/** Tallest scroll area the page makes (browsers cap element heights). */
const MAX_PX = 8_000_000;
/** Rows rendered beyond the visible ones, above and below. */
const OVERSCAN = 10;
/** Pages kept in memory: those nearest the view (a page open all day on a
 * busy log must not keep every event it saw). */
const KEPT_PAGES = 40;

/** The page of sequence numbers `seq` falls in. */
const pageOf = (seq: number) => Math.floor((seq - 1) / PAGE);

/** A one-line summary of an event's payload. */
function summary(e: LogEvent): string {
  const text = JSON.stringify(body(e));
  return text.length > 160 ? `${text.slice(0, 159)}…` : text;
}

/** `pages` without those farthest from page `near`, past [`KEPT_PAGES`]. */
function trimmed(pages: Map<number, LogEvent[]>, near: number): Map<number, LogEvent[]> {
  if (pages.size <= KEPT_PAGES) return pages;
  const keep = [...pages.keys()].sort((a, b) => Math.abs(a - near) - Math.abs(b - near)).slice(0, KEPT_PAGES);
  return new Map(keep.map((k) => [k, pages.get(k)!]));
}

/** Where the rows in view start, and how far down they are drawn. */
interface Window {
  first: number;
  top: number;
}

/** The timeline view; `onError` is told of failed requests (a
 * `SignedOut` among them when the session ends). */
export function Timeline({ onError }: { onError: (e: unknown) => void }) {
  const [head, setHead] = useState(0);
  const [pages, setPages] = useState(() => new Map<number, LogEvent[]>());
  const [selected, setSelected] = useState<number | null>(null);
  const [follow, setFollow] = useState(true);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);
  const [verified, setVerified] = useState<string>("not checked");
  const noFilters: Filters = { type: "", stream: "", correlation_id: "", since: "", until: "" };
  const [draft, setDraft] = useState<Filters>(noFilters);
  const [filters, setFilters] = useState<Filters>(noFilters);
  const scroller = useRef<HTMLDivElement>(null);
  const loading = useRef(new Set<number>());
  // Set while the page scrolls the list itself (following): that scroll
  // is not the reader leaving the bottom.
  const scrolling = useRef(false);
  // Scaled (a long log): the row at the top of the view where the reader
  // left it, and the scroll bar's place then.
  const anchor = useRef<{ row: number; at: number } | null>(null);
  const geometry = useRef({ span: 0, room: 1 });

  // The log's head, then live events from just after it.
  useEffect(() => {
    let closed = false;
    const stop = onEvent((e) => {
      setPages((old) => {
        const page = pageOf(e.seq);
        const rows = old.get(page);
        if (!rows) return old; // fetched when scrolled to
        const next = new Map(old);
        next.set(page, insert(rows, e));
        return next;
      });
      setHead((h) => Math.max(h, e.seq));
    });
    get<Health>("/health")
      .then((health) => {
        if (!closed) setHead((h) => Math.max(h, health.head_seq));
      })
      .catch(onError);
    return () => {
      closed = true;
      stop();
    };
  }, []);

  // The size of the list's box.
  useEffect(() => {
    const box = scroller.current;
    if (!box) return;
    const observer = new ResizeObserver(() => setHeight(box.clientHeight));
    observer.observe(box);
    return () => observer.disconnect();
  }, []);

  const total = head;
  const scale = Math.min(1, MAX_PX / Math.max(1, total * ROW));
  const inner = Math.max(total * ROW * scale, 0);
  const count = Math.ceil(height / ROW) + 1;

  const shown = Math.floor(height / ROW);
  const span = Math.max(0, total - shown);
  const room = Math.max(1, inner - height);
  // Scaled, the rows in view follow the scroll bar by a ratio that events
  // streaming in would change: a reader who is not following keeps the row
  // they read (`anchor`: the row at the top, fractional, and where the
  // scroll bar was), and scrolling moves on from it.
  geometry.current = { span, room };
  // Following, the newest row is at the bottom: no row to keep.
  if (follow) anchor.current = null;
  const view: Window = useMemo(() => {
    if (scale === 1) {
      const first = Math.floor(scrollTop / ROW);
      return { first, top: first * ROW };
    }
    // At the bottom (following), the newest row is the last one in view.
    const exact = follow || !anchor.current ? Math.min(1, scrollTop / room) * span : anchor.current.row;
    const first = Math.floor(exact);
    return { first, top: scrollTop - (exact - first) * ROW };
  }, [scrollTop, scale, room, span, follow]);

  const from = Math.max(0, view.first - (scale === 1 ? OVERSCAN : 0));
  const to = Math.min(total, view.first + count + OVERSCAN);

  // Fetches the pages the rows in view need.
  useEffect(() => {
    if (total === 0) return;
    for (let page = pageOf(from + 1); page <= pageOf(Math.max(to, 1)); page++) {
      // A page read before some of its events were committed is read again.
      const first = page * PAGE + 1;
      const want = Math.min(first + PAGE - 1, total) - first + 1;
      if ((pages.get(page)?.length ?? -1) >= want || loading.current.has(page)) continue;
      loading.current.add(page);
      get<EventPage>(`/events?from=${page * PAGE + 1}&limit=${PAGE}`)
        .then((got) => {
          setPages((old) => {
            const next = new Map(old);
            let rows = got.items;
            for (const live of old.get(page) ?? []) rows = insert(rows, live);
            next.set(page, rows);
            return trimmed(next, page);
          });
        })
        .catch(onError)
        .finally(() => loading.current.delete(page));
    }
  }, [from, to, total, pages]);

  // Following: the newest event stays in view as events arrive.
  useEffect(() => {
    const box = scroller.current;
    if (follow && box && box.scrollTop < box.scrollHeight - box.clientHeight) {
      scrolling.current = true;
      box.scrollTop = box.scrollHeight;
    }
  }, [follow, total, height]);

  const onScroll = useCallback(() => {
    const box = scroller.current;
    if (!box) return;
    // Scaled: the scroll moves the rows in view from where they were.
    // From the anchor to either end of the scroll bar, the rows left that
    // way: the bar's ends are still the log's ends.
    const { span, room } = geometry.current;
    const was = anchor.current;
    const at = box.scrollTop;
    let row = (at / room) * span;
    if (was && at >= was.at) row = was.row + (room > was.at ? ((at - was.at) / (room - was.at)) * (span - was.row) : 0);
    else if (was) row = was.at > 0 ? (was.row * at) / was.at : 0;
    anchor.current = { row: Math.min(span, Math.max(0, row)), at };
    setScrollTop(box.scrollTop);
    if (scrolling.current) {
      // The page's own scroll to the bottom: still following.
      scrolling.current = false;
      return;
    }
    const bottom = box.scrollTop + box.clientHeight >= box.scrollHeight - ROW;
    if (bottom) anchor.current = null;
    setFollow(bottom);
  }, []);

  // Stops following: the rows in view stay as they are (scaled, anchored
  // where they are now).
  const stopFollowing = () => {
    if (!follow) return;
    if (!anchor.current) anchor.current = { row: Math.min(1, scrollTop / room) * span, at: scrollTop };
    setFollow(false);
  };

  // Scaled: puts row `seq` in view (a key, a match opened) and anchors
  // the view there.
  const scrollTo = (seq: number) => {
    const box = scroller.current;
    if (!box) return;
    const row = Math.min(span, Math.max(0, seq - 1 - Math.floor(shown / 2)));
    const at = (row / Math.max(1, span)) * room;
    anchor.current = { row, at };
    box.scrollTop = at;
    setScrollTop(at);
  };

  const event = (seq: number) => pages.get(pageOf(seq))?.find((e) => e.seq === seq);

  // Keyboard: arrows, Page Up/Down, Home/End move the selection.
  const onKey = (k: KeyboardEvent) => {
    const step: Record<string, number> = {
      ArrowDown: 1,
      ArrowUp: -1,
      j: 1,
      k: -1,
      PageDown: count - 1,
      PageUp: -(count - 1),
      Home: -total,
      End: total,
    };
    if (!(k.key in step) || total === 0) return;
    k.preventDefault();
    const next = Math.min(total, Math.max(1, (selected ?? total) + step[k.key]));
    setSelected(next);
    const box = scroller.current;
    if (box && scale === 1) {
      const y = (next - 1) * ROW;
      if (y < box.scrollTop) box.scrollTop = y;
      else if (y + ROW > box.scrollTop + box.clientHeight) box.scrollTop = y + ROW - box.clientHeight;
    } else if (box) {
      stopFollowing();
      const top = Math.floor(anchor.current?.row ?? span);
      if (next - 1 < top || next > top + shown) scrollTo(next);
    }
  };

  const verify = () => {
    setVerified("checking…");
    get<{ ok: boolean; events: number; first_bad_seq?: number; error?: string }>("/events/verify")
      .then((v) =>
        setVerified(v.ok ? `chain verified: ${v.events} events` : `chain broken at ${v.first_bad_seq}: ${v.error}`),
      )
      .catch((e) => {
        setVerified("not checked");
        onError(e);
      });
  };

  const rows = [];
  for (let i = from; i < to; i++) {
    const seq = i + 1;
    const e = event(seq);
    const y = view.top + (i - view.first) * ROW;
    rows.push(html`
      <div
        key=${seq}
        id=${`event-${seq}`}
        role="option"
        aria-selected=${selected === seq}
        class=${`row${selected === seq ? " selected" : ""}`}
        style=${{ transform: `translateY(${y}px)` }}
        onClick=${() => setSelected(seq)}
      >
        <span class="seq">${seq}</span>
        ${e
          ? html`<span class="time">${clock(e.recorded_at)}</span>
              <span class=${`type type-${e.type.split("_")[0]}`}>${e.type}</span>
              <span class="stream">${e.stream}</span>
              <span class="summary">${summary(e)}</span>`
          : html`<span class="loading">…</span>`}
      </div>
    `);
  }

  // Opens event `seq`, and brings it into view in the full timeline.
  const open = (seq: number) => {
    setSelected(seq);
    const box = scroller.current;
    if (!box || !unfiltered(filters)) return;
    stopFollowing();
    if (scale === 1) box.scrollTop = Math.max(0, (seq - 1) * ROW - box.clientHeight / 2);
    else scrollTo(seq);
  };

  const field = (key: keyof Filters, label: string, placeholder: string) => html`
    <label>${label}
      <input value=${draft[key]} placeholder=${placeholder} aria-label=${`Filter by ${label}`}
             onInput=${(e: Event) => setDraft({ ...draft, [key]: (e.target as HTMLInputElement).value })} />
    </label>`;

  return html`
    <section class="timeline" aria-label="Timeline">
      <div class="toolbar">
        <span data-testid="head">${total} events</span>
        <label><input type="checkbox" checked=${follow} onChange=${(e: Event) => {
          if ((e.target as HTMLInputElement).checked) setFollow(true);
          else stopFollowing();
        }} /> follow new events</label>
        <button type="button" onClick=${verify}>Verify chain</button>
        <span class="verified" role="status" data-testid="verified">${verified}</span>
      </div>
      <form class="filters" aria-label="Filters" onSubmit=${(e: Event) => {
        e.preventDefault();
        setFilters(draft);
      }}>
        ${field("type", "type", "task_failed")}
        ${field("stream", "stream", "task:")}
        ${field("correlation_id", "correlation", "id")}
        ${field("since", "since", "2026-12-05T10:00:00Z")}
        ${field("until", "until", "RFC 3339")}
        <button type="submit">filter</button>
        ${!unfiltered(filters) &&
        html`<button type="button" onClick=${() => {
          setDraft(noFilters);
          setFilters(noFilters);
        }}>clear</button>`}
      </form>
      <div class="split">
        ${!unfiltered(filters) &&
        html`<${Matches} key=${JSON.stringify(filters)} filters=${filters} selected=${selected}
            onSelect=${open} onError=${onError} />`}
        <div
          hidden=${!unfiltered(filters)}
          class="scroller"
          ref=${scroller}
          tabIndex="0"
          role="listbox"
          aria-label="Events, newest last"
          aria-activedescendant=${selected !== null && selected > from && selected <= to ? `event-${selected}` : undefined}
          onScroll=${onScroll}
          onKeyDown=${onKey}
        >
          <div class="rows" style=${{ height: `${inner}px` }}>${rows}</div>
        </div>
        <aside class="detail" aria-label="Event">
          ${selected !== null
            ? html`<${EventDetail} seq=${selected} onSelect=${open} onError=${onError} />`
            : html`<p class="hint">Select an event (click it, or move with the arrow keys) to see it whole, with its causes and effects.</p>`}
        </aside>
      </div>
    </section>
  `;
}

/** `rows` with `e` in sequence order (replacing one of the same number). */
function insert(rows: LogEvent[], e: LogEvent): LogEvent[] {
  if (rows.some((r) => r.seq === e.seq)) return rows;
  return [...rows, e].sort((a, b) => a.seq - b.seq);
}
