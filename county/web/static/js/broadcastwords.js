// Broadcast words for the pages: receipt states, every reason code a box sends in a broadcast's receipt (the
// router's checks, the broadcast service, the player), the broadcast's own states and classes. The code is
// kept beside the words (on hover and in brackets) because it is what the logs and docs/broadcast.md use.
// tests/test_web_broadcasts.py checks that every reason the box's code can send is in REASONS.
import { t } from "./i18n.js";

export const STATES = {
  no_answer: t("no answer yet"),
  received: t("received"),
  scheduled: t("scheduled"),
  started: t("playing"),
  finished: t("finished"),
  rejected: t("rejected"),
  failed: t("failed"),
  cancelled: t("cancelled"),
  preempted: t("interrupted"),
  expired: t("expired"),
  applied: t("applied"),
};

export const STATE_BADGE = {
  no_answer: "off", received: "warn", scheduled: "warn", started: "ok", finished: "ok", applied: "ok",
  rejected: "bad", failed: "bad", cancelled: "off", preempted: "bad", expired: "bad",
};

// the broadcast (server side): publishing -> sent | publish_failed; awaiting_review -> sent; -> cancelled
export const BROADCAST_STATES = {
  publishing: t("being sent"),
  sent: t("sent"),
  publish_failed: t("not sent (broker unreachable)"),
  awaiting_review: t("awaiting review"),
  cancelled: t("cancelled"),
};

export const CLASSES = {emergency: t("Emergency"), daily: t("Daily"), drill: t("Drill")};

export const REASONS = {
  // the box's command checks (agent/commands.py, agent/protocol/jws.py)
  malformed: t("the command is malformed"),
  too_large: t("the command is too large"),
  alg_not_allowed: t("signature algorithm not allowed"),
  unknown_kid: t("the box does not know the signing key"),
  bad_signature: t("the signature does not verify"),
  not_addressed: t("not addressed to this box"),
  not_yet_valid: t("not yet valid: the box's clock is behind"),
  expired: t("expired before it reached the box"),
  clock_unsynchronised: t("the box's clock is not set: only emergencies are obeyed"),
  replay: t("already received (a repeat of the same command)"),
  replay_unknown: t("issued before the box's replay memory was reset: refused to be safe"),
  retained: t("a retained message is never obeyed"),
  unknown_kind: t("this box does not know the command"),
  internal_error: t("error on the box while checking the command"),
  handler_error: t("error on the box while handling the command"),
  store_error: t("the box could not store it (disk full or read-only?)"),
  closed: t("the box is shutting down"),
  // the broadcast's content (agent/broadcast/items.py, drivers/audio/media.py)
  bad_data: t("the broadcast's fields are invalid"),
  bad_repeat: t("the repeat rule is invalid"),
  bad_audio: t("the audio is damaged"),
  text_too_long: t("the text is too long for the box"),
  hash_mismatch: t("the audio does not match its checksum"),
  audio_too_large: t("the audio is larger than the box accepts"),
  audio_type: t("the box cannot play this audio type"),
  // waiting and ending (agent/broadcast/engine.py)
  quiet_hours: t("held back by the box's quiet hours"),
  preempted: t("interrupted by a more urgent broadcast"),
  window_passed: t("its time window passed before it could play"),
  unknown_broadcast: t("the box has no such broadcast"),
  max_play_s: t("played longer than the box allows, stopped"),
  tts_failed: t("the box could not speak the text"),
  // the player (drivers/audio/player.py, agent/broadcast/live_player.py)
  player_missing: t("the box has no audio player installed"),
  no_device: t("the box has no working sound device"),
  hang: t("the player stopped responding"),
  timeout: t("the player took too long"),
  no_audio: t("no audio arrived"),
  no_audio_link: t("no audio link"),
};

const FAMILIES = [
  [/^player_exit_(\d+)$/, (m) => t("the player failed (exit code {code})", {code: m[1]})],
  [/^decoder_exit_(\d+)$/, (m) => t("the decoder failed (exit code {code})", {code: m[1]})],
  [/^player_killed_(\d+)$/, (m) => t("the player was killed (signal {code})", {code: m[1]})],
  [/^decoder_killed_(\d+)$/, (m) => t("the decoder was killed (signal {code})", {code: m[1]})],
];

// a reason code in words ("" for none); an unknown code is shown as itself
export function reasonText(code) {
  if (!code) return "";
  if (Object.prototype.hasOwnProperty.call(REASONS, code)) return REASONS[code];
  for (const [re, fn] of FAMILIES) {
    const m = re.exec(code);
    if (m) return fn(m);
  }
  return code;
}

export function stateText(state) {
  return STATES[state] || state;
}

export function broadcastStateText(state) {
  return BROADCAST_STATES[state] || state;
}

export function classText(cls) {
  return CLASSES[cls] || cls;
}

const DAY_NAMES = {mon: t("Mon"), tue: t("Tue"), wed: t("Wed"), thu: t("Thu"), fri: t("Fri"), sat: t("Sat"),
  sun: t("Sun")};
export const DAYS = Object.keys(DAY_NAMES);

export function dayText(d) {
  return DAY_NAMES[d] || d;
}

// a repeat rule in words: "every day at 07:30" / "Mon, Thu at 07:30, 2026-12-01 – 2026-12-31"
export function repeatText(r) {
  if (!r) return t("once");
  const days = r.days && r.days.length && r.days.length < 7 ? r.days.map(dayText).join(t(", ")) : t("every day");
  let text = t("{days} at {at}", {days, at: r.at});
  if (r.from || r.until) text += ` (${r.from || "…"} – ${r.until || "…"})`;
  return text;
}
