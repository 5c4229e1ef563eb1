// 广播 compose: text (with the server's spoken preview), an audio file (checked and fitted to the box limit
// by the server, the result's length shown) or a CAP 1.2 import filling the form; class, level, volume,
// start/end and a daily/weekly repeat in the county's timezone; the target picker (targets.js) showing the
// exact boxes before sending. POST /api/v1/broadcasts makes it; the page then opens the broadcast.
import { api, ApiError, explain } from "./api.js";
import { DAYS, dayText } from "./broadcastwords.js";
import { $, $$, clear, h } from "./dom.js";
import { countyDay, fmtDuration, fmtNumber } from "./fmt.js";
import { LANG, t } from "./i18n.js";
import { loaded } from "./session.js";
import { TargetPicker } from "./targets.js";

const form = $("#compose");
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
let audio = null;         // {audio_b64, audio_mime, bytes, duration_s, ...} of the fitted upload
let previewUrl = null;
let audioUrl = null;

function mode() {
  return $$("input[name=mode]").find((r) => r.checked).value;
}

function showMode() {
  const m = mode();
  $("#mode-text").hidden = m === "audio";
  $("#mode-audio").hidden = m !== "audio";
  $("#mode-cap").hidden = m !== "cap";
  update();
}

// a raw upload (the file itself as the body): api() sends JSON only
async function upload(path, file, type) {
  const r = await fetch(path, {method: "POST", credentials: "same-origin", body: file,
    headers: {"Content-Type": type, "X-CSRF-Token": csrf, Accept: "application/json", "Accept-Language": LANG}});
  if (r.status === 401) location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

function sizeText(bytes) {
  return bytes >= 1048576 ? t("{n} MB", {n: fmtNumber(Math.round(bytes / 104857.6) / 10)})
    : t("{n} KB", {n: fmtNumber(Math.max(1, Math.round(bytes / 1024)))});
}

// ------------------------------------------------------------------------------------------ text preview
async function preview() {
  const text = $("#text").value.trim();
  const state = $("#preview-state");
  if (!text) {
    state.textContent = t("Write the text first.");
    return;
  }
  state.textContent = t("The server is speaking it…");
  $("#preview").disabled = true;
  try {
    const r = await fetch("/api/v1/media/tts-preview", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify({text})});
    if (!r.ok) {
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      throw new ApiError(r.status, body);
    }
    const blob = await r.blob();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(blob);
    const player = $("#preview-audio");
    player.src = previewUrl;
    player.hidden = false;
    player.addEventListener("loadedmetadata", () => {
      state.textContent = t("Preview ready: {len}", {len: fmtDuration(player.duration)});
      state.dataset.ready = "1";
    }, {once: true});
    player.play().catch(() => { /* autoplay refused: the controls are there */ });
  } catch (err) {
    state.textContent = explain(err);
  } finally {
    $("#preview").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------ audio upload
async function chooseAudio(ev) {
  const file = ev.target.files[0];
  const state = $("#audio-state");
  audio = null;
  update();
  if (!file) return;
  state.textContent = t("Checking {name}…", {name: file.name});
  try {
    const got = await upload("/api/v1/media/audio", file, file.type || "application/octet-stream");
    audio = got;
    const parts = [t("{len}, {size}", {len: fmtDuration(got.duration_s), size: sizeText(got.bytes)})];
    if (got.reencoded) {
      parts.push(t("re-encoded on the server to Opus {kbps} kbit/s to fit the boxes' limit (was {size})",
        {kbps: got.kbps, size: sizeText(got.source.bytes)}));
    } else {
      parts.push(t("sent as it is"));
    }
    for (const w of got.warnings || []) parts.push(t("Warning: {w}", {w}));
    state.textContent = parts.join(" · ");
    state.dataset.ready = "1";
    const bytes = Uint8Array.from(atob(got.audio_b64), (c) => c.charCodeAt(0));
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(new Blob([bytes], {type: got.audio_mime}));
    $("#audio-player").src = audioUrl;
    $("#audio-player").hidden = false;
    if (!$("#title").value) $("#title").value = file.name.replace(/\.[^.]+$/, "").slice(0, 40);
  } catch (err) {
    state.textContent = explain(err);
  }
  update();
}

// ------------------------------------------------------------------------------------------ CAP import
async function chooseCap(ev) {
  const file = ev.target.files[0];
  const state = $("#cap-state");
  if (!file) return;
  state.textContent = t("Reading {name}…", {name: file.name});
  try {
    const d = await upload("/api/v1/media/cap", file, "application/xml");
    if (d.text === undefined) {
      state.textContent = t("This CAP message only cancels earlier alerts ({n}); nothing to compose.",
        {n: d.cancels.length});
      return;
    }
    $("#title").value = d.title || "";
    $("#text").value = d.text;
    const cls = $("#class");
    if ([...cls.options].some((o) => o.value === d.class)) cls.value = d.class;
    $("#level").value = String(d.level);
    $("#start").value = d.start || "";
    $("#end").value = d.end || "";
    const notes = [t("Imported: {kind} from {sender}", {kind: d.msg_type, sender: d.sender})];
    if (d.class === "emergency" && cls.value !== "emergency") notes.push(t("It is an emergency, which your role may not send: sent as daily."));
    if (d.end_past) notes.push(t("Its end time has already passed."));
    if (d.truncated) notes.push(t("The text was cut to what the boxes speak."));
    if (d.cancels.length) notes.push(t("It replaces {n} earlier alerts: cancel those broadcasts separately.", {n: d.cancels.length}));
    state.textContent = notes.join(" ");
    state.dataset.ready = "1";
    $$("input[name=mode]").find((r) => r.value === "cap").checked = true;
    $("#mode-text").hidden = false;  // the imported text stays editable
    update();
  } catch (err) {
    state.textContent = explain(err);
  }
}

// ------------------------------------------------------------------------------------------ repeat
function buildDays() {
  const box = $("#repeat-days");
  for (const d of DAYS) {
    box.append(h("label", {}, h("input", {type: "checkbox", value: d, checked: d === "mon"}), " ", dayText(d)));
  }
}

function showRepeat() {
  const r = $("#repeat").value;
  $("#repeat-fields").hidden = !r;
  $("#repeat-days").hidden = r !== "weekly";
  if (r && !$("#repeat-from").value) $("#repeat-from").value = countyDay();
  update();
}

function repeatRule() {
  const r = $("#repeat").value;
  if (!r) return null;
  const rule = {at: $("#repeat-at").value};
  if (r === "weekly") rule.days = $$("#repeat-days input:checked").map((i) => i.value);
  if ($("#repeat-from").value) rule.from = $("#repeat-from").value;
  if ($("#repeat-until").value) rule.until = $("#repeat-until").value;
  return rule;
}

// ------------------------------------------------------------------------------------------ send
const picker = new TargetPicker($("#target-tree"), $("#target-boxes"), $("#target-count"), () => update());

function problem() {
  const m = mode();
  if (m === "audio" && !audio) return t("Choose an audio file.");
  if (m !== "audio" && !$("#text").value.trim()) return t("Write the text.");
  if ($("#repeat").value === "weekly" && !$$("#repeat-days input:checked").length) return t("Pick at least one day.");
  if ($("#repeat").value && !$("#repeat-at").value) return t("Give the time of day.");
  if (picker.pending) return t("Working out the boxes…");
  if (!picker.result.boxes.length) return t("Choose where it is heard.");
  return null;
}

function update() {
  const cls = $("#class").value;
  const review = (cls === "daily" && form.dataset.reviewDaily) || (cls === "drill" && form.dataset.reviewDrill);
  $("#review-note").hidden = !review;
  $("#text-count").textContent = t("{n} / 2000 characters", {n: fmtNumber($("#text").value.length)});
  const why = problem();
  $("#send").disabled = why !== null;
  $("#send").title = why || "";
  $("#send-why").textContent = why || "";
}

function body() {
  const out = {to: picker.result.to, class: $("#class").value};
  const title = $("#title").value.trim();
  if (title) out.title = title;
  if (mode() === "audio") {
    out.audio_b64 = audio.audio_b64;
    out.audio_mime = audio.audio_mime;
    if ($("#text").value.trim()) out.text = $("#text").value.trim();  // a transcript
  } else {
    out.text = $("#text").value.trim();
  }
  if ($("#level").value) out.level = Number($("#level").value);
  if ($("#volume").value !== "") out.volume = Number($("#volume").value);
  if ($("#start").value) out.start = $("#start").value;
  if ($("#end").value) out.end = $("#end").value;
  const rule = repeatRule();
  if (rule) out.repeat = rule;
  return out;
}

async function send(ev) {
  ev.preventDefault();
  if (problem() !== null) return;
  const error = $("#compose-error");
  error.hidden = true;
  $("#send").disabled = true;
  const expected = picker.result.boxes.map((b) => b.box);
  try {
    const got = await api("/api/v1/broadcasts", {method: "POST", body: body()});
    const same = got.boxes && got.boxes.length === expected.length && got.boxes.every((b, i) => b === expected[i]);
    location.assign(`/broadcasts/${encodeURIComponent(got.id)}${same ? "" : "?changed=1"}`);
  } catch (err) {
    let text = explain(err);
    if (err instanceof ApiError && err.status === 503 && err.body && err.body.id) {
      location.assign(`/broadcasts/${encodeURIComponent(err.body.id)}`);  // stored; the page offers resend
      return;
    }
    if (err instanceof ApiError && err.body && err.body.reason === "start_past") text = t("The start time has already passed.");
    if (err instanceof ApiError && err.body && err.body.reason === "nobody_hears") text = t("No box answers to one of the targets.");
    clear(error).append(text);
    error.hidden = false;
    update();
  }
}

buildDays();
for (const r of $$("input[name=mode]")) r.addEventListener("change", showMode);
$("#preview").addEventListener("click", preview);
$("#audio-file").addEventListener("change", chooseAudio);
$("#cap-file").addEventListener("change", chooseCap);
$("#repeat").addEventListener("change", showRepeat);
form.addEventListener("input", () => update());
form.addEventListener("change", () => update());
form.addEventListener("submit", send);
await picker.load();
showMode();
loaded();
