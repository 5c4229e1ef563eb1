// The JSON API from the page: same-origin fetch with the session cookie (HttpOnly: scripts never see it)
// and the session's CSRF token (<meta name="csrf-token">) on every write. A 401 goes to the login page.
import { LANG, t } from "./i18n.js";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export async function api(path, {method = "GET", body, raw = false, headers = {}} = {}) {
  // Accept-Language: the page's language, so the server's error details come back in it (routes_common.py)
  const init = {method, credentials: "same-origin",
                headers: {Accept: "application/json", "Accept-Language": LANG, ...headers}};
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    const next = location.pathname + location.search;
    location.assign(`/login?next=${encodeURIComponent(next)}`);
    throw new ApiError(401, {detail: t("Your session has ended: log in again.")});
  }
  if (raw) return r;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = {detail: text}; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// A user-facing sentence for a failed call (the status put in words; the server's detail is in the page's
// language where the server has the words, else English)
export function explain(err) {
  if (!(err instanceof ApiError)) return t("The server could not be reached.");
  if (err.status === 403) return t("Your role may not do this.");
  if (err.status === 404) return t("Not found.");
  if (err.status === 409) return t("Someone changed this meanwhile; reload the page.");
  if (err.status === 429) return t("Too many requests; wait a moment.");
  if (err.status >= 500) return t("The server had a problem; try again.");
  return t("The request was refused: {detail}", {detail: err.message});
}
