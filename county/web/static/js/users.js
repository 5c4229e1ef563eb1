// 用户: the users an admin may manage (GET /api/v1/users); add (POST), change role/scope, disable or
// enable, set a password (PATCH /api/v1/users/{name}). Every change is audited by the server.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtDateTime } from "./fmt.js";
import { t } from "./i18n.js";
import { may, USER, loaded } from "./session.js";
import { toast } from "./shell.js";
import { ROLE_WORDS, roleWord } from "./roles.js";

const manage = may("user.manage");
let scopes = [{id: "", name: t("Whole county")}];

async function loadScopes() {
  try {
    const o = await api("/api/v1/overview");
    scopes = [{id: "", name: o.county.name ? t("Whole county ({name})", {name: o.county.name}) : t("Whole county")}];
    for (const tw of o.townships) {
      scopes.push({id: tw.id, name: tw.name});
      for (const v of tw.villages) scopes.push({id: v.id, name: `${tw.name} · ${v.name}`});
    }
  } catch (err) {
    toast(explain(err), "error");
  }
}

function scopeName(id) {
  if (!id) return scopes[0].name;
  const s = scopes.find((x) => x.id === id);
  return s ? s.name : id;
}

function roleSelect(value) {
  return h("select", {class: "role-select", "aria-label": t("Role")},
    Object.entries(ROLE_WORDS).map(([k, w]) => h("option", {value: k, selected: k === value}, w)));
}

function scopeSelect(value) {
  return h("select", {class: "scope-select", "aria-label": t("Scope")},
    scopes.map((s) => h("option", {value: s.id, selected: s.id === (value || "")}, s.name)));
}

async function change(name, body, done) {
  try {
    await api(`/api/v1/users/${encodeURIComponent(name)}`, {method: "PATCH", body});
    toast(done);
    await showUsers();
  } catch (err) {
    toast(explain(err), "error");
  }
}

function actions(u) {
  const role = roleSelect(u.role);
  const scope = scopeSelect(u.scope);
  const pw = h("input", {type: "password", minlength: 8, maxlength: 1024, placeholder: t("New password"),
    autocomplete: "new-password", "aria-label": t("New password")});
  const self = u.name === USER;
  return h("td", {class: "actions", "data-needs": "user.manage"},
    role, scope,
    h("button", {type: "button", class: "secondary", dataset: {act: "save"}, onclick: () =>
      change(u.name, {role: role.value, scope: scope.value || null}, t("Saved: {name}", {name: u.name}))}, t("Save")),
    h("button", {type: "button", class: u.disabled ? "secondary" : "danger", disabled: self && !u.disabled,
      dataset: {act: u.disabled ? "enable" : "disable"}, onclick: () =>
        change(u.name, {disabled: !u.disabled}, u.disabled ? t("Enabled: {name}", {name: u.name})
          : t("Disabled: {name}", {name: u.name}))}, u.disabled ? t("Enable") : t("Disable")),
    pw,
    h("button", {type: "button", class: "secondary", dataset: {act: "password"}, onclick: () => {
      if (pw.value.length < 8) { toast(t("A password has at least 8 characters."), "error"); return; }
      change(u.name, {password: pw.value}, t("Password set: {name}", {name: u.name}));
    }}, t("Set password")));
}

async function showUsers() {
  const body = $("#users tbody");
  try {
    const users = await api("/api/v1/users");
    clear(body).append(...users.map((u) => h("tr", {dataset: {user: u.name}, class: u.disabled ? "disabled" : ""},
      h("td", {}, u.name), h("td", {}, u.display_name || "–"), h("td", {class: "role"}, roleWord(u.role)),
      h("td", {title: u.scope || ""}, scopeName(u.scope)), h("td", {}, u.phone || "–"),
      h("td", {class: "status"}, u.disabled ? h("span", {class: "badge off"}, t("disabled"))
        : h("span", {class: "badge ok"}, t("active"))),
      h("td", {}, fmtDateTime(u.created_at)),
      manage ? actions(u) : null)));
  } catch (err) {
    clear(body).append(h("tr", {}, h("td", {colspan: 8, class: "error"}, explain(err))));
  }
}

function addForm() {
  const form = $("#add-user");
  if (!form) return;
  const role = form.querySelector("select[name=role]");
  role.replaceWith(Object.assign(roleSelect("viewer"), {name: "role"}));
  const scope = form.querySelector("select[name=scope]");
  scope.replaceWith(Object.assign(scopeSelect(""), {name: "scope"}));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {name: f.get("name"), role: f.get("role"), password: f.get("password"),
      scope: f.get("scope") || null, display_name: f.get("display_name") || null, phone: f.get("phone") || null};
    try {
      await api("/api/v1/users", {method: "POST", body});
      $("#add-result").textContent = t("Added: {name}", {name: body.name});
      form.reset();
      await showUsers();
    } catch (err) {
      $("#add-result").textContent = err.status === 409 ? t("That user name is taken.") : explain(err);
    }
  });
}

async function main() {
  await loadScopes();
  addForm();
  await showUsers();
  loaded();
}

main();
