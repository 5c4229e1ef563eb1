// The logged-in user as the page was rendered for them (public fields only) and what their role may do.
// The UI hides what a role may not do; the server refuses it anyway.
const b = document.body.dataset;
const actions = new Set((b.may || "").split(" ").filter(Boolean));

export const USER = b.user || "";
export const ROLE = b.role || "";
export function may(action) {
  return actions.has(action);
}

// Marks the page as filled (tests and the benchmark wait for body[data-loaded]).
export function loaded(what = "1") {
  document.body.dataset.loaded = what;
  // ms since the navigation started, by the browser's own clock (bench/console_web.py reads it)
  document.body.dataset.loadedMs = String(Math.round(performance.now()));
}
