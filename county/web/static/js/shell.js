// Every page: the language switch (cookie vc_lang, a year; the server renders the page in it), logout
// (DELETE /api/v1/session with the CSRF header), and toasts.
import { api } from "./api.js";
import { $, $$ } from "./dom.js";
import { t } from "./i18n.js";

for (const btn of $$("[data-set-lang]")) {
  btn.addEventListener("click", () => {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `vc_lang=${btn.dataset.setLang}; Path=/; Max-Age=31536000; SameSite=Lax${secure}`;
    location.reload();
  });
}

const logout = $("#logout");
if (logout) {
  logout.addEventListener("click", async () => {
    try {
      await api("/api/v1/session", {method: "DELETE"});
    } finally {
      location.assign("/login");
    }
  });
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const el = $("#toast");
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

window.addEventListener("unhandledrejection", (ev) => {
  console.error(ev.reason);
  toast(t("Something went wrong on this page; reload it."), "error");
});
