// lion's dashboard: signs in with the server's token (exchanged for a
// session cookie), then shows the kernel live. Every view uses the same API
// as any other client.

import { render } from "preact";
import { useState } from "preact/hooks";
import { Problem, SignedOut, get, signIn } from "./api";
import { html } from "./html";
import { Timeline } from "./timeline";
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
  const [theme, setTheme] = useState<Theme>((localStorage.getItem("lion.theme") as Theme) ?? "system");

  // Whether the cookie this browser holds still opens a session.
  if (signedIn === null) {
    get("/events?limit=1")
      .then(() => setSignedIn(true))
      .catch((e) => {
        setSignedIn(false);
        if (!(e instanceof SignedOut)) setWhy(String(e));
      });
    return html`<p class="starting">…</p>`;
  }

  const onError = (e: unknown) => {
    if (e instanceof SignedOut) {
      setWhy("Your session ended: sign in again.");
      setSignedIn(false);
    } else {
      setError(e instanceof Problem || e instanceof Error ? e.message : String(e));
    }
  };

  if (!signedIn) {
    return html`<${SignIn} why=${why} onSignedIn=${() => setSignedIn(true)} />`;
  }

  const nextTheme: Record<Theme, Theme> = { system: "light", light: "dark", dark: "system" };
  return html`
    <header>
      <h1>lion</h1>
      <nav aria-label="Views"><a href="#timeline" aria-current="page">Timeline</a></nav>
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
    <main><${Timeline} onError=${onError} /></main>
  `;
}

applyTheme((localStorage.getItem("lion.theme") as Theme) ?? "system");
render(html`<${App} />`, document.getElementById("app")!);
