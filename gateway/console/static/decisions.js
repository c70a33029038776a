// The recent decisions of one cache (GET /v1/caches/{id}/decisions), newest first: the asked
// and the cached prompt side by side, with "wrong answer" (feedback) and "delete entry". Rows
// are kept from one poll to the next (keyed by the decision), so that a button stays put
// while the table updates around it.

import { api, cachePath, describe, el, formatNumber, say, setText } from "./api.js";

const LIMIT = 50;

function keyOf(d) {
  return [d.at, d.route, d.outcome, d.entryId, d.prompt].join("\u241f");
}

function time(at) {
  return new Date(at * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function promptCell(cls, text, truncated) {
  const cell = el("td", { class: `prompt ${cls}`, text: text || "—" });
  if (truncated) cell.append(el("span", { class: "truncated", text: " …", title: "truncated" }));
  return cell;
}

export class DecisionsTable {
  constructor() {
    this.body = document.querySelector("#decisions tbody");
    this.rows = new Map(); // decision key -> <tr>
    this.order = "";
    this.cacheId = "";
  }

  reset(cacheId) {
    this.cacheId = cacheId;
    this.rows.clear();
    this.order = "";
    this.body.replaceChildren();
    setText("decisions-note", "");
    say("decisions-message", "");
    document.getElementById("decisions-empty").hidden = false;
  }

  /** Reads the newest decisions and shows them. Throws ApiError (401, 403). */
  async poll(cacheId) {
    let reply;
    try {
      reply = await api("GET", cachePath(cacheId, `/decisions?limit=${LIMIT}`));
    } catch (error) {
      if (error.status === 401 || error.status === 403) throw error;
      say("decisions-message", `decisions unavailable: ${describe(error)}`, true);
      return;
    }
    say("decisions-message", "");
    setText(
      "decisions-note",
      `${formatNumber(reply.kept)} kept of ${formatNumber(reply.capacity)} on the cache server that answered (each replica keeps its own)`,
    );
    const keys = reply.decisions.map(keyOf);
    const order = keys.join("\n");
    if (order === this.order) return;
    this.order = order;
    const rows = new Map();
    reply.decisions.forEach((d, i) => rows.set(keys[i], this.rows.get(keys[i]) || this.row(d)));
    this.rows = rows;
    this.body.replaceChildren(...rows.values());
    document.getElementById("decisions-empty").hidden = rows.size > 0;
  }

  row(d) {
    const status = el("span", { class: "status", role: "status" });
    const actions = el("td", { class: "actions" });
    const tr = el(
      "tr",
      { class: `decision ${d.outcome}`, data: { outcome: d.outcome, entryId: d.entryId || "", route: d.route } },
      [
        el("td", { class: "time", text: time(d.at), title: `${d.route} at ${new Date(d.at * 1000).toISOString()}` }),
        el("td", {}, [el("span", { class: `badge ${d.outcome}`, text: d.outcome })]),
        promptCell("asked", d.prompt, d.promptTruncated),
        promptCell("cached", d.entryPrompt, d.entryPromptTruncated),
        el("td", { class: "num", text: d.entryId ? d.similarity.toFixed(3) : "—" }),
        el("td", { text: d.strategy || "—" }),
        el("td", { class: "policy", text: `${d.policy} ${d.policy === "verified" ? "≤" : "≥"}\u00a0${+d.threshold.toFixed(3)}` }),
        el("td", { class: "num", text: d.latencyMs.toFixed(1) }),
        actions,
      ],
    );
    if (d.outcome === "hit" && d.entryId) {
      const wrong = el("button", { type: "button", class: "wrong", text: "wrong answer" });
      if (d.promptTruncated) {
        wrong.disabled = true;
        wrong.title = "the asked prompt was truncated here: report it from your application";
      } else {
        wrong.title = "report this answer wrong for this prompt: it is not served for it again";
      }
      wrong.addEventListener("click", () => this.reportWrong(d, wrong, status));
      actions.append(wrong);
    }
    if (d.entryId) {
      const remove = el("button", { type: "button", class: "delete", text: "delete entry" });
      remove.addEventListener("click", () => this.deleteEntry(d, remove, status));
      actions.append(remove);
    }
    actions.append(status);
    return tr;
  }

  async reportWrong(d, button, status) {
    button.disabled = true;
    try {
      await api("POST", cachePath(this.cacheId, `/entries/${encodeURIComponent(d.entryId)}/feedback`), {
        prompt: d.prompt,
        correct: false,
      });
      status.textContent = "reported wrong";
      status.className = "status done";
    } catch (error) {
      button.disabled = false;
      status.textContent = describe(error);
      status.className = "status error";
    }
  }

  async deleteEntry(d, button, status) {
    const what = d.entryPrompt ? ` ("${d.entryPrompt.slice(0, 80)}")` : "";
    if (!window.confirm(`Delete entry ${d.entryId}${what} from cache ${this.cacheId}?`)) return;
    button.disabled = true;
    try {
      await api("DELETE", cachePath(this.cacheId, `/entries/${encodeURIComponent(d.entryId)}`));
      status.textContent = "entry deleted";
      status.className = "status done";
    } catch (error) {
      button.disabled = false;
      status.textContent = error.status === 404 ? "already gone" : describe(error);
      status.className = `status ${error.status === 404 ? "done" : "error"}`;
    }
  }
}
