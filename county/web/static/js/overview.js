// 总览: counts on top, then the region tree (county -> township -> village) with one health line per village.
import { api, explain } from "./api.js";
import { $, clear, h } from "./dom.js";
import { fmtNumber } from "./fmt.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";

function count(n, label, id) {
  return h("div", {class: "count", id}, h("span", {class: "n"}, fmtNumber(n)), h("span", {class: "l"}, label));
}

async function main() {
  const tree = $("#tree");
  try {
    const boxes = await api("/api/v1/boxes");
    const online = boxes.filter((b) => b.state === "online").length;
    clear($("#counts")).append(count(boxes.length, t("Boxes"), "count-boxes"),
      count(online, t("Boxes online"), "count-online"));
    clear(tree).append(h("p", {class: "muted"}, t("{n} boxes", {n: fmtNumber(boxes.length)})));
  } catch (err) {
    clear(tree).append(h("p", {class: "error"}, explain(err)));
  }
  loaded();
}

main();
