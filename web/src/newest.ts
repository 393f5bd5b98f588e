// The newest entities of a kind (tasks, runs, agents), from the timeline's
// read model: each stream's first event, newest first — the API's own
// lists go oldest first, which on a long-lived home would show the oldest.
// And how a list of the newest takes in its first page and live reads.

import { get, type Health, type LogEvent } from "./api";

/** A page of the newest streams starting with `prefix` (their first
 * events, of `type` if given), and where the next (older) page starts. */
export async function newest(
  prefix: string,
  type: string | null,
  limit: number,
  before?: number,
): Promise<{ events: LogEvent[]; next?: number }> {
  const params = new URLSearchParams({ first: "true", stream: prefix, limit: String(limit) });
  if (type) params.set("type", type);
  if (before) params.set("before", String(before));
  // The read model follows the log a moment behind: the first page is read
  // again (a few times at most) until it has caught up with the head.
  const { head_seq } = before ? { head_seq: 0 } : await get<Health>("/health");
  for (let tries = 0; ; tries++) {
    const page = await get<{ items: LogEvent[]; next?: number; indexed: number }>(`/timeline?${params}`);
    if (page.indexed >= head_seq || tries >= 20) return { events: page.items, next: page.next };
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The id an entity's stream names (`task:ID` → ID, `agent:NAME:llm` → NAME). */
export const idOf = (stream: string) => stream.split(":")[1] ?? "";

/** A first page of `read` items (newest first) put into a list kept live
 * meanwhile (`old`): an item already there was read since, so it is newer
 * and kept; items only in `old` (new since) stay on top. */
export function withFirstPage<T>(old: T[], read: T[], key: (item: T) => string): T[] {
  const live = new Map(old.map((item) => [key(item), item]));
  const listed = new Set(read.map(key));
  return [...old.filter((item) => !listed.has(key(item))), ...read.map((item) => live.get(key(item)) ?? item)];
}

/** `list` with `item` in place of its older copy, or on top when new; the
 * oldest go past `most` items, except the one whose key is `keep`. */
export function withItem<T>(list: T[], item: T, key: (item: T) => string, most: number, keep?: string | null): T[] {
  const at = list.findIndex((old) => key(old) === key(item));
  if (at >= 0) return list.map((old, i) => (i === at ? item : old));
  return [item, ...list].filter((old, i) => i < most || key(old) === keep);
}
