// The cache browser: search entries by a prompt (POST .../entries/search), delete one, delete
// by attributes (with confirm()), flush (the operator types the cache id to confirm).

import { api, cachePath, describe, el, formatNumber, parseAttributes, say } from "./api.js";

export class EntriesPanel {
  constructor(onChange) {
    this.cacheId = "";
    this.onChange = onChange; // called after entries were deleted
    this.results = document.getElementById("search-results");
    document.getElementById("search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.search();
    });
    document.getElementById("delete-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.deleteMatching();
    });
    const confirmBox = document.getElementById("flush-confirm");
    const input = document.getElementById("flush-input");
    const flush = document.getElementById("flush-do");
    document.getElementById("flush-start").addEventListener("click", () => {
      input.value = "";
      flush.disabled = true;
      confirmBox.hidden = false;
      input.focus();
    });
    document.getElementById("flush-cancel").addEventListener("click", () => {
      confirmBox.hidden = true;
    });
    input.addEventListener("input", () => {
      flush.disabled = input.value !== this.cacheId;
    });
    flush.addEventListener("click", () => this.flush());
  }

  reset(cacheId) {
    this.cacheId = cacheId;
    document.getElementById("flush-id").textContent = cacheId;
    document.getElementById("flush-confirm").hidden = true;
    this.results.hidden = true;
    this.results.tBodies[0].replaceChildren();
    for (const id of ["search-message", "delete-message", "flush-message"]) say(id, "");
  }

  async search() {
    const body = { prompt: document.getElementById("search-prompt").value };
    const threshold = document.getElementById("search-threshold").value;
    if (threshold !== "") body.similarityThreshold = Number(threshold);
    body.maxResults = Number(document.getElementById("search-max").value || 10);
    try {
      const attributes = parseAttributes(document.getElementById("search-attributes").value);
      if (Object.keys(attributes).length) body.attributes = attributes;
      const reply = await api("POST", cachePath(this.cacheId, "/entries/search"), body);
      this.showResults(reply.data);
      say("search-message", reply.data.length ? "" : "no entry near enough");
    } catch (error) {
      say("search-message", describe(error), true);
    }
  }

  showResults(entries) {
    const rows = entries.map((entry) => {
      const status = el("span", { class: "status", role: "status" });
      const remove = el("button", { type: "button", class: "delete", text: "delete entry" });
      remove.addEventListener("click", () => this.deleteEntry(entry, remove, status));
      const attributes = Object.entries(entry.attributes)
        .map(([k, v]) => `${k}=${v}`)
        .join(", ");
      return el("tr", { data: { entryId: entry.id } }, [
        el("td", { class: "prompt", text: entry.prompt, title: entry.id }),
        el("td", { class: "prompt response", title: entry.response }, [
          el("div", { class: "clamp", text: entry.response }),
        ]),
        el("td", { text: attributes || "—" }),
        el("td", { class: "num", text: entry.similarity.toFixed(3) }),
        el("td", { text: entry.searchStrategy }),
        el("td", { class: "actions" }, [remove, status]),
      ]);
    });
    this.results.tBodies[0].replaceChildren(...rows);
    this.results.hidden = rows.length === 0;
  }

  async deleteEntry(entry, button, status) {
    if (!window.confirm(`Delete entry ${entry.id} ("${entry.prompt.slice(0, 80)}")?`)) return;
    button.disabled = true;
    try {
      await api("DELETE", cachePath(this.cacheId, `/entries/${encodeURIComponent(entry.id)}`));
      status.textContent = "entry deleted";
      status.className = "status done";
      this.onChange();
    } catch (error) {
      button.disabled = false;
      status.textContent = error.status === 404 ? "already gone" : describe(error);
      status.className = `status ${error.status === 404 ? "done" : "error"}`;
    }
  }

  async deleteMatching() {
    let attributes;
    try {
      attributes = parseAttributes(document.getElementById("delete-attributes").value);
    } catch (error) {
      say("delete-message", error.message, true);
      return;
    }
    const pairs = Object.entries(attributes).map(([k, v]) => `${k}=${v}`);
    if (!pairs.length) {
      say("delete-message", "name at least one key=value (to delete every entry, flush)", true);
      return;
    }
    const question = `Delete every entry of cache ${this.cacheId} with ${pairs.join(" and ")}?`;
    if (!window.confirm(question)) return;
    try {
      const reply = await api("DELETE", cachePath(this.cacheId, "/entries"), { attributes });
      say("delete-message", `${formatNumber(reply.deletedEntriesCount)} entries deleted`);
      this.onChange();
    } catch (error) {
      say("delete-message", describe(error), true);
    }
  }

  async flush() {
    const flush = document.getElementById("flush-do");
    flush.disabled = true;
    try {
      await api("POST", cachePath(this.cacheId, "/flush"));
      document.getElementById("flush-confirm").hidden = true;
      say("flush-message", `cache ${this.cacheId} flushed: every entry deleted`);
      this.results.hidden = true;
      this.onChange();
    } catch (error) {
      flush.disabled = false;
      say("flush-message", describe(error), true);
    }
  }
}
