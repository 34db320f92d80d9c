// The model/status panel: which models this server runs, the chat engine's load, and the
// numbers of the last reply (speed, time to first token, prompt tokens served from cache).

import { byId, el, percent, seconds } from "./dom.js";

export class StatusPanel {
  constructor(api, { showError }) {
    this.api = api;
    this.showError = showError;
    byId("refresh-status").addEventListener("click", () => this.refresh());
  }

  async refresh() {
    try {
      const status = await this.api.request("GET", "/api/v1/models");
      this.renderModels(status);
    } catch (error) {
      this.showError(error);
    }
  }

  renderModels({ models, engine, engine_choice: choice }) {
    const list = byId("models");
    list.replaceChildren(
      ...models.map((m) => el("li", { text: describeModel(m), "data-role": m.role })),
    );
    if (models.length === 0) list.append(el("li", { text: "No model is loaded." }));
    byId("engine-load").textContent = engine ? describeLoad(engine) : "";
    byId("engine-choice").textContent = choice ? describeChoice(choice) : "";
  }

  /** The last reply's `done` event, and the time to its first token as the page saw it. */
  showReply(done, pageTtftS) {
    const { usage = {}, timings = {} } = done;
    const completion = usage.completion_tokens ?? 0;
    const generation = generationSeconds(timings);
    byId("stat-speed").textContent =
      completion > 0 && generation > 0 ? `${(completion / generation).toFixed(1)} tokens/s` : "–";
    byId("stat-ttft").textContent =
      `${seconds(pageTtftS)} (engine ${seconds(timings.engine_ttft_s ?? NaN)})`;
    byId("stat-cached").textContent =
      `${usage.cached_prompt_tokens ?? 0} of ${usage.prompt_tokens ?? 0}`;
    byId("stat-completion").textContent = String(completion);
  }

  clear() {
    byId("models").replaceChildren();
    byId("engine-load").textContent = "";
    byId("engine-choice").textContent = "";
    for (const id of ["stat-speed", "stat-ttft", "stat-cached", "stat-completion"]) {
      byId(id).textContent = "–";
    }
  }
}

/** Seconds from the first token to the end of the turn, from the done event's timings. */
function generationSeconds(timings) {
  const total = timings.total_s ?? 0;
  if (timings.ttft_s !== undefined) return total - timings.ttft_s; // turn start to first token
  return total - (timings.prepare_s ?? 0) - (timings.engine_ttft_s ?? 0);
}

function describeLoad(engine) {
  const jobs = engine.background
    ? ` (${engine.background} of them background memory ${engine.background === 1 ? "job" : "jobs"})`
    : "";
  const parts = [
    `${engine.running} running, ${engine.waiting} waiting${jobs}`,
    `KV cache ${percent(engine.kv_usage)} in use`,
  ];
  if (engine.prefix_hit_rate !== null) parts.push(`prefix cache hits ${percent(engine.prefix_hit_rate)}`);
  return parts.join(" · ");
}

const ENGINE_NAMES = { llamacpp: "llama.cpp", vllm: "vLLM", remote: "a remote server" };

function engineName(engine) {
  return ENGINE_NAMES[engine] ?? engine;
}

function describeModel(model) {
  const on = model.engine ? `, on ${engineName(model.engine)}` : "";
  return `${model.id} (${model.role}${on})`;
}

/** How the engine was chosen on this machine: each engine's measured speed, or why not. */
function describeChoice(choice) {
  const measured = Object.entries(choice.figures).map(
    ([engine, f]) =>
      `${engineName(engine)} ${f.batched_tok_s.toFixed(1)} tokens/s on concurrent turns, ` +
      `${(f.single_tpot_s * 1000).toFixed(0)} ms per token alone`,
  );
  const failed = Object.keys(choice.failed).map((engine) => `${engineName(engine)} failed to start`);
  const when = new Date(choice.measured_at * 1000).toLocaleDateString();
  const how = measured.length ? `measured ${when}: ${[...measured, ...failed].join("; ")}` : choice.reason;
  return `Engine chosen for this machine: ${engineName(choice.engine)} (${how}).`;
}
