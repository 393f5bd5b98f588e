// The server's API as the page uses it: requests carry the session cookie
// (and, when they change state, the CSRF token the sign-in returned); a 401
// means the page must sign in again.

/** Thrown when the server answers 401: no session, or an expired one. */
export class SignedOut extends Error {}

/** A problem the server answered with (RFC 9457). */
export class Problem extends Error {}

const CSRF_KEY = "lion.csrf";

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
    throw new Problem(detail);
  }
  return (await response.json()) as T;
}

/** GETs `path` as JSON. */
export async function get<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { credentials: "same-origin" }));
}

/** GETs `path` as text (`/metrics`). */
export async function getText(path: string): Promise<string> {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) throw new SignedOut("signed out");
  if (!response.ok) throw new Problem(`${response.status} ${response.statusText}`);
  return response.text();
}

/** POSTs `body` to `path`, with the session's CSRF token. */
export async function post<T>(path: string, body: unknown = {}): Promise<T> {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "content-type": "application/json",
      "x-csrf-token": sessionStorage.getItem(CSRF_KEY) ?? "",
    },
    body: JSON.stringify(body),
  });
  return answer<T>(response);
}

/** Exchanges the server's token for a session cookie. */
export async function signIn(token: string): Promise<void> {
  const response = await fetch("/auth/session", {
    method: "POST",
    credentials: "same-origin",
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
