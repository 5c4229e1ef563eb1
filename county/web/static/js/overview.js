// 总览: counts on top, then the region tree (county -> township -> village) with one health line per village.
// Names everywhere; ids only on hover (title). Data: GET /api/v1/overview.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtAgo, fmtDateTime, fmtNumber, fmtPercent } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";

function count(n, label, id, kind) {
  return h("div", {class: "count", id, dataset: {kind: kind || ""}},
    h("span", {class: "n"}, n), h("span", {class: "l"}, label));
}

function stateBadge(state) {
  const words = {online: t("online"), offline: t("offline"), unknown: t("never reported")};
  const kind = {online: "ok", offline: "bad"}[state] || "off";
  return h("span", {class: `badge ${kind}`}, words[state] || t("unknown state"));
}

function item(label, value, title) {
  return h("span", {class: "item", title}, label, " ", h("b", {}, value));
}

function healthLine(c, now) {
  const items = [
    item(t("Boxes online"), `${fmtNumber(c.boxes_online)}/${fmtNumber(c.boxes)}`),
    item(t("Last seen"), fmtAgo(c.last_seen, now), c.last_seen ? fmtDateTime(c.last_seen) : undefined),
    item(t("Backlog"), fmtNumber(c.backlog)),
    item(t("Cameras online"), `${fmtNumber(c.cameras_online)}/${fmtNumber(c.cameras)}`),
    item(t("Today's camera rate"), fmtPercent(c.camera_rate_today)),
    item(t("Wearers reporting"), fmtNumber(c.wearers)),
  ];
  const alarms = item(t("Open alarms"), fmtNumber(c.alarms_open));
  if (c.alarms_open > 0) alarms.classList.add("error");
  items.push(alarms);
  return items;
}

function boxList(boxes, now) {
  return h("ul", {class: "boxes"}, boxes.map((b) => h("li", {},
    h("a", {href: `/boxes/${encodeURIComponent(b.id)}`, title: b.id}, b.name), " ", stateBadge(b.state), " ",
    h("span", {class: "muted", title: b.last_seen ? fmtDateTime(b.last_seen) : undefined}, fmtAgo(b.last_seen, now)))));
}

function village(v, now) {
  return h("li", {class: "village", dataset: {village: v.id}},
    h("span", {class: "name", title: v.id}, v.name), ...healthLine(v.counts, now), boxList(v.boxes, now));
}

// A township's villages are built when it is first opened: a county of 2,000 boxes opens with its
// townships' lines only (bench/console_web.py), a small one with everything open.
function township(tw, now, open) {
  const c = tw.counts;
  const list = h("ul", {});
  const fill = () => { if (!list.firstChild) list.append(...tw.villages.map((v) => village(v, now))); };
  const details = h("details", {open},
    h("summary", {title: tw.id}, tw.name, " ",
      h("span", {class: "muted"}, t("{on}/{all} boxes online", {on: fmtNumber(c.boxes_online), all: fmtNumber(c.boxes)}))),
    h("div", {class: "village township-line"}, ...healthLine(c, now)), list);
  if (open) fill();
  details.addEventListener("toggle", () => { if (details.open) fill(); });
  return h("li", {dataset: {township: tw.id}}, details);
}

const OPEN_UP_TO = 40;  // villages: up to this many the tree opens fully

async function main() {
  const tree = $("#tree");
  try {
    const o = await api("/api/v1/overview");
    const c = o.counts;
    clear($("#counts")).append(
      count(`${fmtNumber(c.boxes_online)}/${fmtNumber(c.boxes)}`, t("Boxes online"), "count-boxes"),
      count(`${fmtNumber(c.cameras_online)}/${fmtNumber(c.cameras)}`, t("Cameras online"), "count-cameras"),
      count(fmtPercent(c.camera_rate_today), t("Today's camera rate"), "count-rate"),
      count(fmtNumber(c.wearers), t("Wearers reporting"), "count-wearers"),
      count(fmtNumber(c.alarms_open), t("Open alarms"), "count-alarms", c.alarms_open ? "alarm" : ""),
      count(fmtNumber(c.backlog), t("Backlog"), "count-backlog"));
    const root = h("ul", {});
    const villages = o.townships.reduce((n, tw) => n + tw.villages.length, 0);
    for (const tw of o.townships) root.append(township(tw, o.now, villages <= OPEN_UP_TO));
    if (o.unregistered) {
      root.append(h("li", {dataset: {township: ""}}, h("details", {open: true},
        h("summary", {}, t("Not in the regions file")),
        h("div", {class: "village"}, ...healthLine(o.unregistered.counts, o.now), boxList(o.unregistered.boxes, o.now)))));
    }
    const title = h("h2", {title: o.county.id || ""}, o.county.name || t("County"));
    clear(tree).append(title, o.townships.length || o.unregistered ? root : h("p", {class: "muted"}, t("No boxes yet.")));
  } catch (err) {
    clear(tree).append(h("p", {class: "error"}, explain(err)));
  }
  loaded();
}

main();
