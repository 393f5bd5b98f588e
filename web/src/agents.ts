// Agents: each agent's conversation (prompts, answers, tool calls with
// their results or refusals), its answer streaming in as the model
// generates it, and the tokens it used against its budget.

import { useEffect, useRef, useState } from "preact/hooks";
import { get } from "./api";
import { body } from "./format";
import { idOf, newest, withFirstPage, withItem } from "./newest";
import { html } from "./html";
import { onEvent, onLive } from "./live";
import { rereader } from "./reread";

/** An agent as `/agents` gives it. */
interface Agent {
  name: string;
  status: string;
  model?: string;
  tools: string[];
  budget_tokens: number;
  tokens_used: number;
  message_count: number;
  messages: Message[];
}

/** One message of a conversation. */
interface Message {
  role: string;
  content: string;
  tool_calls?: { id: string; name: string; arguments: string }[];
  tool_call_id?: string;
}

/** Agents listed (the newest). */
const AGENTS = 100;

/** Messages of a conversation shown: its last ones. */
const MESSAGES = 500;

/** The Agents view. */
export function Agents({ onError }: { onError: (e: unknown) => void }) {
  const [agents, setAgents] = useState<Agent[]>([]);
  const [selected, setSelected] = useState<string | null>(null);
  // Bumped when the selected agent's conversation changed in the log.
  const [moved, setMoved] = useState(0);
  const selectedRef = useRef(selected);
  selectedRef.current = selected;

  // An agent is read one request at a time, a few times a second at most
  // (`?limit=1`: its state without its conversation); a new one goes
  // first, the oldest past the list's length is let go.
  const [reader] = useState(() =>
    rereader((name) =>
      get<Agent>(`/agents/${encodeURIComponent(name)}?limit=1`)
        .then((agent) =>
          setAgents((old) => withItem(old, agent, (a) => a.name, AGENTS, selectedRef.current)),
        )
        .catch(onError),
    ),
  );

  // The newest agents (by their first spawn), each read for its state;
  // one read live meanwhile is newer, and kept.
  useEffect(() => {
    newest("agent:", "agent_spawned", AGENTS)
      .then(({ events }) =>
        Promise.all(events.map((e) => get<Agent>(`/agents/${encodeURIComponent(idOf(e.stream))}?limit=1`))),
      )
      .then((read) =>
        setAgents((old) => withFirstPage(old, read, (a) => a.name)),
      )
      .catch(onError);
    const unwatch = onEvent((e) => {
      if (!e.stream.startsWith("agent:") || e.type === "llm_delta") return;
      const name = idOf(e.stream);
      reader.mark(name);
      if (name === selectedRef.current) setMoved((m) => m + 1);
    });
    return () => {
      unwatch();
      reader.stop();
    };
  }, []);

  return html`
    <section class="agents split" aria-label="Agents">
      <div class="list">
        ${agents.length === 0 && html`<p class="hint">No agent yet (<code>lion agent spawn NAME</code>).</p>`}
        <ul class="runs" aria-label="Agents">
          ${agents.map(
            (a) => html`<li key=${a.name}>
              <button type="button" class=${`link${selected === a.name ? " selected" : ""}`} data-agent=${a.name}
                      onClick=${() => setSelected(a.name)}>${a.name}</button>
              <span class=${`status status-${a.status === "active" ? "running" : "cancelled"}`}>${a.status}</span>
              <span class="muted">${a.tokens_used} / ${a.budget_tokens} tokens</span>
            </li>`,
          )}
        </ul>
      </div>
      <div class="detail conversation">
        ${selected
          ? html`<${Conversation} key=${selected} name=${selected} moved=${moved} onError=${onError} />`
          : html`<p class="hint">Select an agent to see its conversation.</p>`}
      </div>
    </section>
  `;
}

/** One agent's conversation, with the answer being generated now. */
function Conversation({ name, moved, onError }: { name: string; moved: number; onError: (e: unknown) => void }) {
  const [agent, setAgent] = useState<Agent | null>(null);
  // The text streamed so far of each answer not yet in the log, by run.
  const [streaming, setStreaming] = useState<Record<string, string>>({});
  const finished = useRef(new Set<string>());

  // The conversation's last MESSAGES messages (its size first, then the
  // page that ends with it), read again as the log changes it: one read
  // at a time, so a late answer never replaces a newer one.
  const [reader] = useState(() =>
    rereader(() => {
      const path = `/agents/${encodeURIComponent(name)}`;
      return get<Agent>(`${path}?limit=1`)
        .then((a) => {
          const after = Math.max(0, a.message_count - MESSAGES);
          return get<Agent>(`${path}?limit=${MESSAGES}${after > 0 ? `&after=${after}` : ""}`);
        })
        .then(setAgent)
        .catch(onError);
    }),
  );
  useEffect(() => reader.mark(name), [moved]);
  useEffect(() => reader.stop, []);

  // Chunks of the answer as the model streams them (not yet committed),
  // until the finished (or stopped) answer is in the log.
  useEffect(() => {
    const stopLive = onLive((e) => {
      const delta = e.event.llm_delta;
      if (e.type !== "llm_delta" || delta?.agent !== name) return;
      const run = String(delta.run_id);
      // A delta can arrive after its answer was committed: it is dropped.
      if (finished.current.has(run)) return;
      setStreaming((s) => ({ ...s, [run]: (s[run] ?? "") + String(delta.text) }));
    });
    const stopLog = onEvent((e) => {
      const b = body(e);
      if ((e.type === "llm_finished" || e.type === "llm_stopped") && b.agent === name) {
        const run = String(b.run_id);
        finished.current.add(run);
        setStreaming((s) => {
          const { [run]: _, ...rest } = s;
          return rest;
        });
      }
    });
    return () => {
      stopLive();
      stopLog();
    };
  }, [name]);

  if (!agent) return html`<p class="hint">…</p>`;
  const share = agent.budget_tokens > 0 ? Math.min(100, (100 * agent.tokens_used) / agent.budget_tokens) : 0;
  return html`
    <h2>${agent.name} <span class="muted">${agent.model ?? "default model"}</span></h2>
    <p class="muted">tools: ${agent.tools.length ? agent.tools.join(", ") : "none"}</p>
    <div class="budget" data-testid="tokens">
      <span>${agent.tokens_used} of ${agent.budget_tokens} tokens</span>
      <meter min="0" max="100" value=${share} aria-label="Tokens used of the budget"></meter>
    </div>
    <ol class="messages" aria-label="Conversation">
      ${agent.messages.map(
        (m, i) => html`<li key=${i} class=${`message ${m.role}${m.role === "tool" && m.content.startsWith("error:") ? " refused" : ""}`}>
          <span class="role">${m.role}</span>
          ${m.content && html`<div class="content">${m.content}</div>`}
          ${(m.tool_calls ?? []).map(
            (c) => html`<div key=${c.id} class="tool-call">calls <code>${c.name}</code> <code>${c.arguments}</code></div>`,
          )}
        </li>`,
      )}
      ${Object.entries(streaming).map(
        ([run, text]) => html`<li key=${run} class="message assistant streaming" aria-live="polite">
          <span class="role">assistant, writing…</span>
          <div class="content" data-testid="streaming">${text}</div>
        </li>`,
      )}
    </ol>
  `;
}
