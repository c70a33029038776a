// The cache's hit policy: GET /v1/caches/{id}/policy, and PUT to change it.

import { api, cachePath, describe, say, setText } from "./api.js";

export class PolicyPanel {
  constructor(onChange) {
    this.cacheId = "";
    this.onChange = onChange; // called with the cache's new policy
    document.getElementById("policy-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
  }

  async load(cacheId) {
    this.cacheId = cacheId;
    say("policy-message", "");
    try {
      this.show(await api("GET", cachePath(cacheId, "/policy")));
    } catch (error) {
      setText("policy-current", "");
      say("policy-message", describe(error), true);
    }
  }

  show(policy) {
    const bound =
      policy.policy === "verified"
        ? `, wrong hits at most ${policy.maxErrorRate} of ${policy.errorAccounting}`
        : "";
    const source = policy.source === "cache" ? "set for this cache" : "the server's default";
    setText("policy-current", `${policy.policy}${bound} (${source})`);
    document.getElementById("policy-name").value = policy.source === "cache" ? policy.policy : "";
  }

  async save() {
    const name = document.getElementById("policy-name").value;
    const rate = document.getElementById("policy-rate").value;
    const accounting = document.getElementById("policy-accounting").value;
    const body = { policy: name || null };
    if (rate !== "") body.maxErrorRate = Number(rate);
    if (accounting) body.errorAccounting = accounting;
    try {
      const policy = await api("PUT", cachePath(this.cacheId, "/policy"), body);
      this.show(policy);
      say("policy-message", "policy saved");
      this.onChange(policy);
    } catch (error) {
      say("policy-message", describe(error), true);
    }
  }
}
