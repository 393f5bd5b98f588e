// The server's API as the page uses it: requests carry the session cookie
// (and, when they change state, the CSRF token the sign-in returned); a 401
// means the page must sign in again.

/** Thrown when the server answers 401: no session, or an expired one. */
export class SignedOut extends Error {}

/** A problem the server answered with (RFC 9457). */
export class Problem extends Error {}

const CSRF_KEY = "lion.csrf";

/** The header that carries the CSRF token. */
const CSRF_HEADER = "x-csrf-token";

/** `fetch`, with a network failure (the server is down or unreachable)
 * said in words rather than as the browser's "Failed to fetch". */
async function reach(path: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(path, { credentials: "same-origin", ...init });
  } catch {
    throw new Problem(`cannot reach the lion server (${new URL(path, location.href).pathname})`);
  }
}

async function answer<T>(response: Response): Promise<T> {
  if (response.status === 401) {
    throw new SignedOut("signed out");
  }
  if (response.status === 403 && !sessionStorage.getItem(CSRF_KEY)) {
    // A session opened in another tab: this one has no CSRF token to act
    // with, and signing in here gives it one.
    throw new SignedOut("sign in again to act from this tab");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail ?? detail;
    } catch {
      // Not a problem document: the status says it.
    }
    // This tab's CSRF token is an older session's (another tab signed in
    // since): signing in here gives it the current one.
    if (response.status === 403 && detail.includes(CSRF_HEADER)) {
      sessionStorage.removeItem(CSRF_KEY);
      throw new SignedOut("sign in again to act from this tab");
    }
    throw new Problem(detail);
  }
  return (await response.json()) as T;
}

/** GETs `path` as JSON. */
export async function get<T>(path: string): Promise<T> {
  return answer<T>(await reach(path, {}));
}

/** GETs `path` as text (`/metrics`). */
export async function getText(path: string): Promise<string> {
  const response = await reach(path, {});
  if (response.status === 401) throw new SignedOut("signed out");
  if (!response.ok) throw new Problem(`${response.status} ${response.statusText}`);
  return response.text();
}

/** POSTs `body` to `path`, with the session's CSRF token. */
export async function post<T>(path: string, body: unknown = {}): Promise<T> {
  const response = await reach(path, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      [CSRF_HEADER]: sessionStorage.getItem(CSRF_KEY) ?? "",
    },
    body: JSON.stringify(body),
  });
  return answer<T>(response);
}

/** Exchanges the server's token for a session cookie. */
export async function signIn(token: string): Promise<void> {
  const response = await reach("/auth/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (response.status === 401 || response.status === 403) {
    throw new Problem("that token is not this server's");
  }
  if (response.status === 503) {
    throw new Problem("the kernel is starting: try again in a moment");
  }
  const session = await answer<{ csrf_token: string }>(response);
  sessionStorage.setItem(CSRF_KEY, session.csrf_token);
}

/** One event of the log, as `/events` and `/events/stream` give it. */
export interface LogEvent {
  seq: number;
  event_id: string;
  stream: string;
  stream_version: number;
  type: string;
  recorded_at: string;
  correlation_id: string;
  causation_id?: string;
  event: Record<string, unknown>;
  hash: string;
}

/** A page of `/events` (`next`: a sequence number) or of
 * `/streams/{stream}/events` (`next`: a stream version). */
export interface EventPage {
  items: LogEvent[];
  next?: number;
}

/** `/health`: the log's head. */
export interface Health {
  status: string;
  head_seq: number;
}
