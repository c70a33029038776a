// The REST calls of the console, with the operator's key, and the small DOM helpers every
// panel uses. Text from the server only ever reaches the page through textContent.

const KEY_STORE = "semcache.console.key";

/** Whether this gateway has API keys (the page is told so by a meta tag). */
export const keyed = document.querySelector('meta[name="semcache-keyed"]')?.content === "true";

export function getKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
}

/** A refused or failed call: the HTTP status (0: no answer) and the Problem's detail. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** Calls the gateway; the parsed JSON answer (null for 204), or throws ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "the gateway did not answer (is it running?)");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const detail =
      data && typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`;
    throw new ApiError(response.status, detail);
  }
  return data;
}

/** What to tell the operator about a failed call. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error);
  if (error.status === 401) return `the key was refused: ${error.detail}`;
  if (error.status === 403) return `this key may not do that (an admin key is needed): ${error.detail}`;
  return error.status ? `${error.detail} (${error.status})` : error.detail;
}

export function cachePath(cacheId, rest = "") {
  return `/v1/caches/${encodeURIComponent(cacheId)}${rest}`;
}

/** A new element: `props` sets className, textContent (text), title, dataset and attributes. */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "data") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function setText(id, text) {
  document.getElementById(id).textContent = text;
}

/** Shows `text` in the message element `id`, as an error or as plain news. */
export function say(id, text, isError = false) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.classList.toggle("error", isError);
}

/** "key=value, key=value" (or one a line) as an object; throws Error on a malformed pair. */
export function parseAttributes(text) {
  const attributes = {};
  for (const part of text.split(/[\n,]/)) {
    const pair = part.trim();
    if (!pair) continue;
    const at = pair.indexOf("=");
    if (at <= 0) throw new Error(`"${pair}" is not key=value`);
    attributes[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return attributes;
}

export function formatNumber(value, digits = 0) {
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function percent(rate) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`;
}
