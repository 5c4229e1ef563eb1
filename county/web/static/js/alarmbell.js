// The alarm bell: an <audio> element playing a sound generated here (a WAV of two-tone beeps built in memory,
// no audio file shipped or copied), and a browser Notification, for each new alarm.
//
// The sound can be silenced by each user for themself: the choice is kept in this browser under the user's
// name (localStorage "vc.alarm.muted.<user>"), so muting never silences another user of the same browser
// and no switch anywhere silences everyone. Counters on the element (data-rings, data-played, data-muted-rings,
// data-notified) say what happened; the tests and the benchmark read them instead of listening.
import { t } from "./i18n.js";
import { USER } from "./session.js";

const RATE = 8000;
const MUTE_KEY = `vc.alarm.muted.${USER}`;

// 3 beeps of 880/660 Hz, 0.18 s each with 0.07 s gaps: 16-bit mono PCM in a RIFF/WAVE container
function beepWav() {
  const tones = [880, 660, 880];
  const beep = Math.round(RATE * 0.18), gap = Math.round(RATE * 0.07);
  const n = tones.length * (beep + gap);
  const buf = new ArrayBuffer(44 + n * 2);
  const v = new DataView(buf);
  const str = (off, s) => { for (let i = 0; i < s.length; i++) v.setUint8(off + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + n * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, RATE, true); v.setUint32(28, RATE * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  str(36, "data"); v.setUint32(40, n * 2, true);
  let off = 44;
  for (const f of tones) {
    for (let i = 0; i < beep; i++) {
      const env = Math.min(1, i / 80, (beep - i) / 80);  // no clicks at the edges
      v.setInt16(off, Math.round(Math.sin(2 * Math.PI * f * i / RATE) * 0.6 * env * 32767), true);
      off += 2;
    }
    off += gap * 2;  // silence (the buffer is zeroed)
  }
  return new Blob([buf], {type: "audio/wav"});
}

function count(el, key) {
  el.dataset[key] = String(Number(el.dataset[key] || 0) + 1);
}

export class AlarmBell {
  constructor(audio, muteButton = null, notifyButton = null) {
    this.audio = audio;
    this.audio.src = URL.createObjectURL(beepWav());
    this.audio.preload = "auto";
    this.muteButton = muteButton;
    this.notifyButton = notifyButton;
    this.muted = localStorage.getItem(MUTE_KEY) === "1";
    this.audio.dataset.muted = this.muted ? "1" : "0";
    if (muteButton) {
      muteButton.addEventListener("click", () => this.setMuted(!this.muted));
      this.showMute();
    }
    if (notifyButton) {
      this.showNotify();
      notifyButton.addEventListener("click", async () => {
        if ("Notification" in window) await Notification.requestPermission();
        this.showNotify();
      });
    }
  }

  setMuted(muted) {
    this.muted = muted;
    if (muted) localStorage.setItem(MUTE_KEY, "1");
    else localStorage.removeItem(MUTE_KEY);
    this.audio.dataset.muted = muted ? "1" : "0";
    if (muted) this.audio.pause();
    this.showMute();
  }

  showMute() {
    if (!this.muteButton) return;
    this.muteButton.textContent = this.muted ? t("Sound off (only for you): turn on") : t("Sound on: silence it for me");
    this.muteButton.setAttribute("aria-pressed", this.muted ? "true" : "false");
  }

  showNotify() {
    if (!this.notifyButton) return;
    const state = "Notification" in window ? Notification.permission : "unsupported";
    this.notifyButton.hidden = state !== "default";
    this.notifyButton.textContent = t("Show desktop notifications");
  }

  // one new alarm: the sound (unless this user silenced it) and a notification (if the browser allows)
  ring(title, body, href) {
    const a = this.audio;
    if (this.muted) {
      count(a, "mutedRings");
    } else {
      count(a, "rings");
      a.currentTime = 0;
      const played = a.play();
      if (played && played.then) {
        played.then(() => count(a, "played"), (err) => {
          // a browser that allows no sound before the user touched the page: say so on the page
          a.dataset.blocked = err && err.name ? err.name : "blocked";
        });
      }
    }
    if ("Notification" in window && Notification.permission === "granted") {
      try {
        const n = new Notification(title, {body, tag: href, requireInteraction: true});
        n.onclick = () => { window.focus(); location.assign(href); };
        count(a, "notified");
      } catch (e) {
        console.warn("notification", e);
      }
    }
  }
}
