// The compose page's target picker: the region tree of the user's scope (GET /api/v1/broadcast-targets) with
// a checkbox per township, village and box. The page never builds the broadcast's `to` itself: every change
// sends the ticked regions and boxes to POST /api/v1/broadcast-targets, which answers the targets and the
// exact boxes they reach with the same resolution the server uses when it signs (county/targets.py), and the
// list beside the tree shows those boxes by name.
import { api, explain } from "./api.js";
import { clear, h } from "./dom.js";
import { fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";

const KIND_WORD = {county: t("county"), township: t("township"), village: t("village")};

export class TargetPicker {
  constructor(treeEl, listEl, countEl, onChange) {
    this.treeEl = treeEl;
    this.listEl = listEl;
    this.countEl = countEl;
    this.onChange = onChange;
    this.result = {to: [], boxes: []};
    this.seq = 0;  // answers of older picks are dropped (a slow reply must not overwrite a newer one)
    this.pending = false;
  }

  async load() {
    let root;
    try {
      root = await api("/api/v1/broadcast-targets");
    } catch (err) {
      clear(this.treeEl).append(h("p", {class: "error"}, explain(err)));
      return;
    }
    const top = h("ul");
    top.append(this.node(root));
    if (root.unregistered && root.unregistered.length) {
      const li = h("li", {}, h("strong", {}, t("Boxes not in the regions file")));
      const ul = h("ul");
      for (const b of root.unregistered) ul.append(this.node(b));
      li.append(ul);
      top.append(li);
    }
    clear(this.treeEl).append(top);
    this.treeEl.addEventListener("change", (ev) => {
      if (ev.target.matches("input[type=checkbox]")) this.changed(ev.target);
    });
  }

  node(n) {
    const box = n.kind === "box";
    const input = h("input", {type: "checkbox", value: n.id, dataset: {kind: n.kind}, "data-target": n.id,
      "aria-label": n.name});
    const label = h("label", {title: n.id}, input, " ", n.name,
      box ? h("span", {class: "tcount"}, ` · ${stateWord(n.state)}`)
        : h("span", {class: "tcount"}, ` · ${KIND_WORD[n.kind] || ""} · ${t("{n} boxes", {n: fmtNumber(n.boxes)})}`));
    const li = h("li", {}, label);
    if (n.children && n.children.length) {
      const ul = h("ul");
      for (const c of n.children) ul.append(this.node(c));
      li.append(ul);
    }
    return li;
  }

  changed(input) {
    // a ticked region covers everything below it: shown ticked and locked
    const li = input.closest("li");
    for (const sub of li.querySelectorAll(":scope > ul input[type=checkbox]")) {
      sub.checked = input.checked || sub.dataset.own === "1";
      sub.disabled = input.checked;
    }
    input.dataset.own = input.checked ? "1" : "";
    this.resolve();
  }

  picked() {
    const regions = [], boxes = [];
    for (const input of this.treeEl.querySelectorAll("input[type=checkbox]:checked:not(:disabled)")) {
      (input.dataset.kind === "box" ? boxes : regions).push(input.value);
    }
    return {regions, boxes};
  }

  async resolve() {
    const pick = this.picked();
    const mine = ++this.seq;
    if (!pick.regions.length && !pick.boxes.length) {
      this.show({to: [], boxes: []});
      return;
    }
    this.pending = true;
    this.onChange(null);
    try {
      const got = await api("/api/v1/broadcast-targets", {method: "POST", body: pick});
      if (mine === this.seq) this.show(got);
    } catch (err) {
      if (mine === this.seq) {
        this.show({to: [], boxes: []});
        this.countEl.textContent = explain(err);
      }
    }
  }

  show(result) {
    this.pending = false;
    this.result = result;
    clear(this.listEl);
    for (const b of result.boxes) {
      const where = [b.township, b.village].filter(Boolean).join(" · ");
      this.listEl.append(h("li", {dataset: {box: b.box}, title: b.box}, b.name || b.box,
        where ? h("span", {class: "muted"}, ` (${where})`) : null));
    }
    this.countEl.textContent = result.boxes.length
      ? t("{n} boxes will sound", {n: fmtNumber(result.boxes.length)}) : t("No box chosen yet");
    this.listEl.dataset.count = String(result.boxes.length);
    this.onChange(result);
  }
}

function stateWord(state) {
  return {online: t("online"), offline: t("offline")}[state] || t("state unknown");
}
