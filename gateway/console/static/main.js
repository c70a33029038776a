// The console's start: the key (when this gateway has keys), the cache picker, and the poll
// that refreshes statistics and decisions every 2 s.

import { api, describe, forgetKey, getKey, keyed, say, setKey, setText } from "./api.js";
import { DecisionsTable } from "./decisions.js";
import { EntriesPanel } from "./entries.js";
import { LiveStats } from "./live.js";
import { PolicyPanel } from "./policy.js";

const POLL_MS = 2000;
const CACHES_EVERY = 15; // polls between two readings of the cache list

const $ = (id) => document.getElementById(id);
const live = new LiveStats(POLL_MS / 1000);
const decisions = new DecisionsTable();
const entries = new EntriesPanel(() => pollNow());
const policy = new PolicyPanel(() => pollNow());

let cacheId = initialCache();
let generation = 0; // bumped on every change of cache or key: late answers are dropped
let timer = null;
let polls = 0;

function initialCache() {
  const found = /(?:^#|&)cache=([^&]*)/.exec(location.hash);
  return found ? decodeURIComponent(found[1]) : "default";
}

function showKeyPanel(message) {
  stop();
  $("main").hidden = true;
  $("cache-form").hidden = true;
  $("key-panel").hidden = false;
  say("key-message", message, Boolean(message));
  showKeyState();
  $("key-input").focus();
}

function showKeyState() {
  if (!keyed) {
    setText("key-state", "no API keys on this gateway");
    $("forget-key").hidden = true;
    return;
  }
  setText("key-state", getKey() ? "key set (this tab only)" : "no key");
  $("forget-key").hidden = !getKey();
}

function setLive(on) {
  $("live").classList.toggle("on", on);
  $("live").textContent = on ? "live" : "paused";
}

async function refreshCaches() {
  const select = $("cache-select");
  let caches = [];
  try {
    caches = (await api("GET", "/v1/caches")).caches;
  } catch (error) {
    if (error.status === 401) throw error;
    // Not allowed to list, or a server without the route: the text box still opens any cache.
  }
  const options = caches.map((c) => {
    const option = document.createElement("option");
    option.value = c.cacheId;
    option.textContent = `${c.cacheId} (${c.cacheSize} entries, ${c.policy})`;
    return option;
  });
  if (!caches.some((c) => c.cacheId === cacheId)) {
    const option = document.createElement("option");
    option.value = cacheId;
    option.textContent = cacheId;
    options.unshift(option);
  }
  select.replaceChildren(...options);
  select.value = cacheId;
}

function stop() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  setLive(false);
}

async function poll(current) {
  try {
    await live.poll(cacheId);
    if (current !== generation) return;
    await decisions.poll(cacheId);
    if (current !== generation) return;
    polls += 1;
    document.body.dataset.polls = String(polls);
    say("page-message", "");
    setLive(true);
    if (polls % CACHES_EVERY === 0) await refreshCaches();
  } catch (error) {
    if (current !== generation) return;
    if (error.status === 401) {
      forgetKey();
      showKeyPanel(describe(error));
      return;
    }
    say("page-message", `cache ${cacheId}: ${describe(error)}`, true);
    if (error.status === 403 || error.status === 400) {
      stop(); // nothing will change until another key or cache is chosen
      return;
    }
    setLive(false); // the gateway or a service is away: keep trying
  }
  if (current === generation) timer = setTimeout(() => tick(current), POLL_MS);
}

function tick(current) {
  if (current !== generation) return;
  if (document.hidden) {
    timer = setTimeout(() => tick(current), POLL_MS);
    return;
  }
  poll(current);
}

/** Polls now, after an action changed the cache (deletes, flush, policy). */
function pollNow() {
  stop();
  poll(generation);
}

function openCache(id) {
  stop();
  cacheId = id;
  document.body.dataset.cache = id;
  history.replaceState(null, "", `#cache=${encodeURIComponent(id)}`);
  live.reset();
  decisions.reset(id);
  entries.reset(id);
  say("page-message", "");
  refreshCaches().catch(() => {}); // a 401 is met by the poll
  policy.load(id);
  poll(generation);
}

async function start() {
  showKeyState();
  if (keyed && !getKey()) {
    showKeyPanel("");
    return;
  }
  try {
    await refreshCaches();
  } catch (error) {
    forgetKey();
    showKeyPanel(describe(error));
    return;
  }
  $("key-panel").hidden = true;
  $("cache-form").hidden = false;
  $("main").hidden = false;
  openCache(cacheId);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  setKey(key);
  $("key-input").value = "";
  start();
});
$("forget-key").addEventListener("click", () => {
  forgetKey();
  showKeyPanel("");
});
$("cache-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("cache-input").value.trim() || $("cache-select").value;
  $("cache-input").value = "";
  if (id) openCache(id);
});
$("cache-select").addEventListener("change", () => openCache($("cache-select").value));

start();
