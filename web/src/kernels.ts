// Kernels: the kernels serving the store, their leases, heartbeats and the
// attempts they hold. Heartbeats are not events of the log, so the view
// asks `/kernels` again every two seconds.

import { useEffect, useState } from "preact/hooks";
import { get } from "./api";
import { html } from "./html";

/** One kernel as `/kernels` gives it. */
interface Kernel {
  id: string;
  host: string;
  pid: number;
  started_at: string;
  heartbeat_at: string;
  lease_ms: number;
  state: string;
  claims: number;
}

/** How often the view asks again, in milliseconds. */
const EVERY = 2000;

/** The Kernels view. */
export function Kernels({ onError }: { onError: (e: unknown) => void }) {
  const [answer, setAnswer] = useState<{ shared: boolean; kernels: Kernel[] } | null>(null);
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const read = () =>
      get<{ shared: boolean; kernels: Kernel[] }>("/kernels")
        .then((a) => {
          setAnswer(a);
          setNow(Date.now());
        })
        .catch(onError);
    read();
    const timer = setInterval(read, EVERY);
    return () => clearInterval(timer);
  }, []);
  if (!answer) return html`<p class="hint">…</p>`;
  if (!answer.shared) {
    return html`<section class="page" aria-label="Kernels">
      <p data-testid="kernels">One kernel serves this store: this server's. The store is the home's own
        SQLite log; kernels share a store on PostgreSQL (<code>lion serve --store postgres://…</code>).</p>
    </section>`;
  }
  const ago = (at: string) => `${Math.max(0, (now - Date.parse(at)) / 1000).toFixed(1)} s ago`;
  return html`
    <section class="page" aria-label="Kernels">
      <table class="attempts" data-testid="kernels">
        <thead><tr><th>kernel</th><th>state</th><th>host</th><th>pid</th><th>claims</th><th>last heartbeat</th><th>lease</th><th>since</th></tr></thead>
        <tbody>
          ${answer.kernels.map(
            (k) => html`<tr key=${k.id}>
              <td>${k.id}</td>
              <td><span class=${`status status-${k.state === "alive" ? "completed" : "failed"}`}>${k.state}</span></td>
              <td>${k.host}</td><td>${k.pid}</td><td>${k.claims}</td>
              <td>${ago(k.heartbeat_at)}</td><td>${(k.lease_ms / 1000).toFixed(1)} s</td>
              <td>${k.started_at.slice(0, 19).replace("T", " ")}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </section>
  `;
}
