// Codes from boxes (envelope kinds, camera states and reasons, receipt states) in words of the page's
// locale. An unknown code is shown as itself in a <code> (a new kind is visible, never hidden).
import { h } from "./dom.js";
import { t } from "./i18n.js";

const KINDS = {
  heartbeat: t("heartbeat"), state: t("box state"), position: t("wearer position"), cameras: t("camera report"),
  camera: t("camera change"), cmd: t("command receipt"), sos: t("SOS"), fall: t("fall"),
  band_removed: t("band removed"), geofence_exit: t("left a geofence"), geofence_enter: t("entered a geofence"),
  lost_contact: t("wearer lost contact"), low_battery: t("low battery"),
};
const CLASSES = {alarm: t("alarm"), event: t("event"), telemetry: t("telemetry"), receipt: t("receipt")};
const CAMERA_STATES = {
  online: t("online"), degraded: t("degraded"), offline: t("offline"), unknown: t("unknown state"),
  maintenance: t("maintenance"),
};
const CAMERA_REASONS = {
  auth_failed: t("wrong camera password"), not_found: t("stream path not found"), no_video: t("no video in the stream"),
  black: t("picture is black"), frozen: t("picture is frozen"), no_frame: t("no picture decoded"),
  protocol_error: t("the camera answered wrongly"), error: t("camera error"), no_credentials: t("no camera password set"),
  credentials_unreadable: t("camera password file unreadable"), unreachable: t("camera unreachable on the network"),
  timeout: t("camera does not answer"), lan_down: t("the box's camera network is down"),
  agent_start: t("the box just started"), agent_down: t("the box was not watching"),
};
const RECEIPTS = {
  received: t("received"), rejected: t("rejected"), scheduled: t("scheduled"), started: t("started"),
  finished: t("finished"), failed: t("failed"), cancelled: t("cancelled"), preempted: t("preempted"),
  expired: t("expired"), applied: t("applied"),
};

function word(table, code) {
  if (code == null || code === "") return "";
  return Object.prototype.hasOwnProperty.call(table, code) ? table[code] : h("code", {}, code);
}

export const kindWord = (k) => word(KINDS, k);
// the class in words as plain text (an unknown class as itself)
export const classText = (c) => (Object.prototype.hasOwnProperty.call(CLASSES, c) ? CLASSES[c] : c);
export const classWord = (c) => word(CLASSES, c);
export const cameraStateWord = (s) => word(CAMERA_STATES, s);
export const cameraReasonWord = (r) => word(CAMERA_REASONS, r);
export const receiptWord = (s) => word(RECEIPTS, s);

export function cameraBadge(state) {
  const kind = {online: "ok", degraded: "warn", offline: "bad"}[state] || "off";
  return h("span", {class: `badge ${kind}`}, cameraStateWord(state));
}

export function boxBadge(state) {
  const words = {online: t("online"), offline: t("offline"), unknown: t("never reported")};
  const kind = {online: "ok", offline: "bad"}[state] || "off";
  return h("span", {class: `badge ${kind}`}, words[state] || t("unknown state"));
}
