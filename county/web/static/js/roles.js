// Role and audit action names in words.
import { h } from "./dom.js";
import { t } from "./i18n.js";

export const ROLE_WORDS = {
  admin: t("Administrator"), operator: t("Operator"), reviewer: t("Reviewer"), viewer: t("Viewer"),
  gridworker: t("Grid worker"),
};

export const ACTION_WORDS = {
  login: t("logged in"), "login.failed": t("failed login"), logout: t("logged out"),
  denied: t("refused request"), "user.add": t("added a user"), "user.update": t("changed a user"),
  "alarm.ack": t("acknowledged an alarm"), "alarm.assign": t("assigned an alarm"),
  "alarm.resolve": t("resolved an alarm"), "alarm.escalate": t("escalated an alarm"),
  "broadcast.create": t("created a broadcast"), "broadcast.approve": t("approved a broadcast"),
  "broadcast.cancel": t("cancelled a broadcast"), "broadcast.resend": t("resent a broadcast"),
  "broadcast.refused": t("broadcast refused"), "broadcast.live": t("live broadcast"),
  "fence.create": t("created a geofence"), "fence.update": t("changed a geofence"),
  "fence.delete": t("deleted a geofence"), "fence.push": t("pushed geofences"),
  "fence.push.failed": t("geofence push failed"), "fence.push.refused": t("geofence push refused"),
  "fence.push.resend": t("resent geofences"),
};

export function roleWord(role) {
  return ROLE_WORDS[role] || h("code", {}, role);
}

export function actionWord(action) {
  return Object.prototype.hasOwnProperty.call(ACTION_WORDS, action) ? ACTION_WORDS[action] : h("code", {}, action);
}
