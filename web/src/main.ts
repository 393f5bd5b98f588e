// lion's dashboard: signs in with the server's token (exchanged for a
// session cookie), then shows the kernel live. Every view uses the same API
// as any other client.

import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { Problem, SignedOut, get, signIn, type Health } from "./api";
import { html } from "./html";
import { follow, onClosed, onLinkState, stop, type LinkState } from "./live";
import { Agents } from "./agents";
import { Kernels } from "./kernels";
import { Overview } from "./overview";
import { Plugins } from "./plugins";
import { Tasks } from "./tasks";
import { Timeline } from "./timeline";
import { Workflows } from "./workflows";
import "./style.css";

/** The sign-in form: nothing else shows until the token is accepted. */
function SignIn({ onSignedIn, why }: { onSignedIn: () => void; why: string }) {
  const [status, setStatus] = useState(why);
  const submit = async (e: Event) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const token = (form.elements.namedItem("token") as HTMLInputElement).value;
    try {
      await signIn(token);
      onSignedIn();
    } catch (error) {
      setStatus(error instanceof Error ? error.message : String(error));
    }
  };
  return html`
    <main class="sign-in">
      <h1>lion</h1>
      <form id="sign-in" onSubmit=${submit}>
        <label for="token">Token (<code>lion serve --print-token</code>)</label>
        <input id="token" name="token" type="password" autocomplete="off" required />
        <button type="submit">Sign in</button>
      </form>
      <p id="status" role="status">${status}</p>
    </main>
  `;
}

/** The views, by the id their address carries (`#tasks`). */
const VIEWS = [
  ["overview", "Overview"],
  ["timeline", "Timeline"],
  ["tasks", "Tasks"],
  ["workflows", "Workflows"],
  ["agents", "Agents"],
  ["plugins", "Plugins"],
  ["kernels", "Kernels"],
] as const;

type View = (typeof VIEWS)[number][0];

/** The view an address names (the timeline by default). */
function viewOf(hash: string): View {
  const id = hash.replace(/^#/, "");
  return VIEWS.find(([v]) => v === id)?.[0] ?? "timeline";
}

/** Light, dark, or the system's. */
type Theme = "system" | "light" | "dark";

function applyTheme(theme: Theme) {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  localStorage.setItem("lion.theme", theme);
}

function App() {
  const [signedIn, setSignedIn] = useState<boolean | null>(null);
  const [why, setWhy] = useState("");
  const [error, setError] = useState("");
  const [link, setLink] = useState<LinkState>("connecting");
  // Read by `onError`, which views keep from their first render.
  const linkRef = useRef(link);
  linkRef.current = link;
  const [theme, setTheme] = useState<Theme>((localStorage.getItem("lion.theme") as Theme) ?? "system");

  const [view, setView] = useState(viewOf(location.hash));
  useEffect(() => {
    const onHash = () => setView(viewOf(location.hash));
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  // Signed in: one live stream for every view, from the log's head on.
  // A stream the browser gave up on (the session ended) sends the page
  // back to the sign-in form, or says the updates stopped.
  useEffect(() => {
    if (!signedIn) return;
    let stopped = false;
    get<Health>("/health")
      .then((health) => {
        if (!stopped) follow(health.head_seq);
      })
      .catch((e) => setError(String(e)));
    // Back in touch: an error said while the server was unreachable is
    // old news.
    const unlink = onLinkState((state) => {
      if (state === "live" && linkRef.current === "reconnecting") setError("");
      setLink(state);
    });
    const unwatch = onClosed(() =>
      get("/events?limit=1")
        .then(() => setError("Live updates stopped: reload the page to resume them."))
        .catch(onError),
    );
    return () => {
      stopped = true;
      unwatch();
      unlink();
      stop();
    };
  }, [signedIn]);

  // Whether the cookie this browser holds still opens a session.
  useEffect(() => {
    if (signedIn !== null) return;
    get("/events?limit=1")
      .then(() => setSignedIn(true))
      .catch((e) => {
        setSignedIn(false);
        if (!(e instanceof SignedOut)) setWhy(String(e));
      });
  }, [signedIn]);
  if (signedIn === null) {
    return html`<p class="starting">…</p>`;
  }

  function onError(e: unknown) {
    if (e instanceof SignedOut) {
      setWhy(e.message === "signed out" ? "Your session ended: sign in again." : `${e.message}.`);
      setSignedIn(false);
    } else {
      // Reads that fail while the server is away say nothing new: the
      // header says it is unreachable.
      if (linkRef.current === "reconnecting") return;
      setError(e instanceof Problem || e instanceof Error ? e.message : String(e));
    }
  }

  if (!signedIn) {
    return html`<${SignIn} why=${why} onSignedIn=${() => setSignedIn(true)} />`;
  }

  const nextTheme: Record<Theme, Theme> = { system: "light", light: "dark", dark: "system" };
  return html`
    <header>
      <h1>lion</h1>
      <nav aria-label="Views">
        ${VIEWS.map(
          ([id, name]) =>
            html`<a key=${id} href=${`#${id}`} aria-current=${view === id ? "page" : undefined}>${name}</a>`,
        )}
      </nav>
      <span class="link-state" role="status" data-testid="link" data-state=${link}>
        ${{ live: "● live", reconnecting: "○ server unreachable, reconnecting…", closed: "○ not live", connecting: "○ connecting…" }[link]}
      </span>
      <button
        type="button"
        aria-label=${`Theme: ${theme}; switch`}
        onClick=${() => {
          const next = nextTheme[theme];
          applyTheme(next);
          setTheme(next);
        }}
      >
        theme: ${theme}
      </button>
    </header>
    ${error && html`<p class="error" role="alert">${error} <button type="button" onClick=${() => setError("")}>dismiss</button></p>`}
    <main>
      ${view === "overview" && html`<${Overview} onError=${onError} />`}
      ${view === "timeline" && html`<${Timeline} onError=${onError} />`}
      ${view === "tasks" && html`<${Tasks} onError=${onError} />`}
      ${view === "workflows" && html`<${Workflows} onError=${onError} />`}
      ${view === "agents" && html`<${Agents} onError=${onError} />`}
      ${view === "plugins" && html`<${Plugins} onError=${onError} />`}
      ${view === "kernels" && html`<${Kernels} onError=${onError} />`}
    </main>
  `;
}

applyTheme((localStorage.getItem("lion.theme") as Theme) ?? "system");
render(html`<${App} />`, document.getElementById("app")!);
