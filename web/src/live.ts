// One event stream per page: `/events/stream` from the log's head on,
// shared by every view (the server bounds how many streams are open).

import type { LogEvent } from "./api";

type Listener = (e: LogEvent) => void;

const listeners = new Set<Listener>();
let source: EventSource | null = null;

/** Starts following the log after sequence number `head` (once). */
export function follow(head: number) {
  if (source) return;
  source = new EventSource(`/events/stream?from=${head + 1}`);
  source.onmessage = (message) => {
    const e = JSON.parse(message.data) as LogEvent;
    if (typeof e.seq !== "number") return;
    for (const listener of listeners) listener(e);
  };
}

/** Calls `listener` with each committed event from now on; returns the
 * call that stops it. */
export function onEvent(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Stops following (signed out). */
export function stop() {
  source?.close();
  source = null;
}
