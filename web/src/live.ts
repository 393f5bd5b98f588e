// One event stream per page: `/events/stream` from the log's head on,
// shared by every view (the server bounds how many streams are open).

import type { LogEvent } from "./api";

type Listener = (e: LogEvent) => void;

/** An event as it happens, before (or without) its commit: streamed
 * chunks of an agent's answer, a task's progress. */
export interface LiveEvent {
  type: string;
  event: Record<string, Record<string, unknown>>;
}

type LiveListener = (e: LiveEvent) => void;

const listeners = new Set<Listener>();
const liveListeners = new Set<LiveListener>();
const closedListeners = new Set<() => void>();
const stateListeners = new Set<(state: LinkState) => void>();
let source: EventSource | null = null;

/** Whether the live stream is connected: "live", "reconnecting" while
 * the server cannot be reached (the browser keeps trying), or "closed"
 * once the browser gave up on it. */
export type LinkState = "connecting" | "live" | "reconnecting" | "closed";

function tell(state: LinkState) {
  for (const listener of stateListeners) listener(state);
}

/** Starts following the log after sequence number `head` (once). */
export function follow(head: number) {
  if (source) return;
  source = new EventSource(`/events/stream?from=${head + 1}`);
  source.onmessage = (message) => {
    const e = JSON.parse(message.data) as LogEvent;
    if (typeof e.seq !== "number") return;
    for (const listener of listeners) listener(e);
  };
  // The browser reconnects by itself (resuming after the last event it
  // got); a stream it gave up on (the session ended: 401) is told.
  source.onopen = () => tell("live");
  source.onerror = () => {
    if (source?.readyState === EventSource.CLOSED) {
      source = null;
      tell("closed");
      for (const listener of closedListeners) listener();
    } else {
      tell("reconnecting");
    }
  };
  source.addEventListener("live", (message) => {
    const e = JSON.parse((message as MessageEvent).data) as LiveEvent;
    for (const listener of liveListeners) listener(e);
  });
}

/** Calls `listener` with each live event from now on; returns the call
 * that stops it. */
export function onLive(listener: LiveListener): () => void {
  liveListeners.add(listener);
  return () => liveListeners.delete(listener);
}

/** Calls `listener` with each committed event from now on; returns the
 * call that stops it. */
export function onEvent(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Calls `listener` when the stream stops for good; returns the call
 * that stops it. */
export function onClosed(listener: () => void): () => void {
  closedListeners.add(listener);
  return () => closedListeners.delete(listener);
}

/** Calls `listener` when the stream connects or loses the server;
 * returns the call that stops it. */
export function onLinkState(listener: (state: LinkState) => void): () => void {
  stateListeners.add(listener);
  return () => stateListeners.delete(listener);
}

/** Stops following (signed out). */
export function stop() {
  source?.close();
  source = null;
}
