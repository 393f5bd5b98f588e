// Small helpers every view shares: an event's body, times, durations.

import type { LogEvent } from "./api";

/** An event's body: its payload is `{"<type>": {…}}`. */
export function body(e: LogEvent): Record<string, unknown> {
  return ((e.event as Record<string, unknown>)[e.type] ?? {}) as Record<string, unknown>;
}

/** `HH:MM:SS.mmm` of an RFC 3339 time, in UTC. */
export const clock = (at: string) => at.slice(11, 23);

/** The time from `from` to `to` (RFC 3339), as `N ms`. */
export const took = (from: string, to: string) => `${Math.max(0, Date.parse(to) - Date.parse(from))} ms`;

/** A short form of an id: its last 12 characters. */
export const short = (id: string) => id.slice(-12);
