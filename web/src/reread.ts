// Reads that live events ask for again and again (a task that changed, the
// list of plugins), kept few and in order: a page left open on a busy
// kernel must not send a request per event, nor let a late answer
// overwrite a newer one.

/** How often marked keys are read, at most. */
const ROUND_MS = 250;

/** Most reads started in one round; the rest wait for the next. */
const PER_ROUND = 50;

/** Marks keys to read again: `mark(key)` on every event that changes
 * `key`; each round (at most every 250 ms) reads up to 50 marked keys with
 * `read`. A key is read one request at a time — marked again while its
 * read runs, it is read once more afterwards — so its answers land in the
 * order they were asked, and a burst of events costs one or two reads.
 * `read` reports its own errors. Returns `mark` and the call that stops
 * reading (a view closed). */
export function rereader(read: (key: string) => Promise<void>): {
  mark: (key: string) => void;
  stop: () => void;
} {
  const marked = new Set<string>();
  const reading = new Set<string>();
  let timer: ReturnType<typeof setTimeout> | null = null;
  let last = -Infinity;
  let stopped = false;

  // The next round: at once after a quiet spell, else a round's time
  // after the last one.
  const schedule = () => {
    if (stopped || timer !== null) return;
    timer = setTimeout(round, Math.max(0, last + ROUND_MS - performance.now()));
  };
  const round = () => {
    timer = null;
    last = performance.now();
    let started = 0;
    for (const key of [...marked]) {
      if (started >= PER_ROUND) break;
      if (reading.has(key)) continue;
      marked.delete(key);
      reading.add(key);
      started++;
      read(key)
        .catch(() => {})
        .finally(() => {
          reading.delete(key);
          if (marked.has(key)) schedule();
        });
    }
    if ([...marked].some((key) => !reading.has(key))) schedule();
  };
  return {
    mark: (key: string) => {
      if (stopped) return;
      marked.add(key);
      schedule();
    },
    stop: () => {
      stopped = true;
      marked.clear();
      if (timer !== null) clearTimeout(timer);
    },
  };
}
