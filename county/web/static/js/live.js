// 实时喊话: microphone -> WebCodecs AudioEncoder (Opus, 20 ms frames) -> the WebSocket /ws/v1/live, which signs
// the frames into packets for the boxes (county/server/routes_live.py). Without AudioEncoder: MediaRecorder
// (Opus in WebM or Ogg), its slices sent as message format v2 and demuxed by the server. The level meter reads the same track.
// Processing (echo cancellation, noise suppression, automatic gain) is off: a loudspeaker announcement wants
// the voice as spoken, and those filters smear clicks and cut the first syllable.
import { explain } from "./api.js";
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { loaded } from "./session.js";
import { TargetPicker } from "./targets.js";

const FRAME_US = 20000;
const QUERY = new URLSearchParams(location.search).get("capture");
// Without WebCodecs' AudioEncoder (or with `?capture=mediarecorder`, which the tests use in Chromium):
// MediaRecorder records Opus in a container, sliced every RECORDER_SLICE_MS; the slices go over the same
// WebSocket as message format v2 (`container` in the start message) and the server demuxes them.
const RECORDER = QUERY === "mediarecorder" || typeof AudioEncoder === "undefined";
const RECORDER_SLICE_MS = 20;
const RECORDER_TYPES = [["audio/webm;codecs=opus", "webm"], ["audio/ogg;codecs=opus", "ogg"]];

function recorderType() {
  if (typeof MediaRecorder === "undefined") return null;
  const want = new URLSearchParams(location.search).get("container");
  for (const [mime, container] of RECORDER_TYPES) {
    if ((!want || want === container) && MediaRecorder.isTypeSupported(mime)) return {mime, container};
  }
  return null;
}
// MediaStreamTrackProcessor (Chromium) hands over the microphone's AudioData directly; elsewhere an AudioWorklet
// does. `?capture=worklet` takes the worklet path anywhere (the tests run it in Chromium too).
const WORKLET = typeof MediaStreamTrackProcessor === "undefined" || QUERY === "worklet";
const startBtn = $("#live-start");
const endBtn = $("#live-end");
const state = $("#live-state");
const meter = $("#live-level");
let session = null;

const picker = new TargetPicker($("#target-tree"), $("#target-list"), $("#target-count"), () => {
  startBtn.disabled = session !== null || !picker.result.to.length;
});

function say(text, cls = "muted") {
  state.className = cls;
  state.textContent = text;
}

class Session {
  constructor() {
    this.ws = null;
    this.stream = null;
    this.encoder = null;
    this.reader = null;
    this.audio = null;
    this.running = false;
    this.frames = 0;
    this.node = null;
    this.recorder = null;
    this.recorderType = null;
    this.sending = Promise.resolve();
  }

  async start(body) {
    if (RECORDER) {
      this.recorderType = recorderType();
      if (!this.recorderType) {
        throw new Error(t("This browser cannot encode Opus audio (WebCodecs AudioEncoder is missing)"));
      }
      body = {...body, v: 2, container: this.recorderType.container};
    }
    this.stream = await navigator.mediaDevices.getUserMedia({audio: {
      channelCount: 1, sampleRate: 48000, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    this.meter();
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    this.ws = new WebSocket(proto + location.host + "/ws/v1/live");
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (ev) => this.message(JSON.parse(ev.data));
    this.ws.onclose = () => this.stop(false);
    this.ws.onopen = () => this.ws.send(JSON.stringify({type: "start", ...body}));
  }

  meter() {
    this.audio = new AudioContext({sampleRate: 48000});
    const analyser = this.audio.createAnalyser();
    analyser.fftSize = 1024;
    this.audio.createMediaStreamSource(this.stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (!this.audio) return;
      analyser.getFloatTimeDomainData(buf);
      let peak = 0;
      for (const v of buf) peak = Math.max(peak, Math.abs(v));
      meter.value = peak;
      requestAnimationFrame(tick);
    };
    tick();
  }

  message(msg) {
    if (msg.type === "started") {
      say(t("Speaking to {n} boxes", {n: msg.boxes.length}), "ok");
      document.body.dataset.liveId = msg.id;
      endBtn.disabled = false;
      this.capture();
    } else if (msg.type === "error") {
      say(msg.detail, "error");
    } else if (msg.type === "ended") {
      say(t("Live broadcast ended"));
      document.body.dataset.liveEnded = "1";
    }
  }

  output(chunk) {
    const bytes = new Uint8Array(chunk.byteLength);
    chunk.copyTo(bytes);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
    this.frames += 1;
    document.body.dataset.liveFrames = String(this.frames);
  }

  newEncoder(sampleRate, numberOfChannels) {
    this.encoder = new AudioEncoder({output: (chunk) => this.output(chunk), error: (err) => say(String(err), "error")});
    this.encoder.configure({codec: "opus", sampleRate, numberOfChannels, bitrate: 24000,
      opus: {frameDuration: FRAME_US}});
  }

  async capture() {
    if (this.recorderType) return this.captureRecorder();
    document.body.dataset.liveCapture = WORKLET ? "worklet" : "track";
    if (WORKLET) return this.captureWorklet();
    const track = this.stream.getAudioTracks()[0];
    this.reader = new MediaStreamTrackProcessor({track}).readable.getReader();
    this.running = true;
    while (this.running) {
      const {value, done} = await this.reader.read();
      if (done) break;
      if (!this.encoder) this.newEncoder(value.sampleRate, value.numberOfChannels);
      this.encoder.encode(value);
      value.close();
    }
  }

  // Without MediaStreamTrackProcessor: an AudioWorklet hands over the samples; 20 ms of them make one AudioData.
  async captureWorklet() {
    const ctx = this.audio;
    await ctx.audioWorklet.addModule("/static/js/live-capture.js");
    const node = new AudioWorkletNode(ctx, "live-capture");
    ctx.createMediaStreamSource(this.stream).connect(node);
    const size = Math.round(ctx.sampleRate * FRAME_US / 1e6);
    let buf = new Float32Array(size);
    let fill = 0;
    let at = 0;
    this.newEncoder(ctx.sampleRate, 1);
    this.running = true;
    node.port.onmessage = (ev) => {
      if (!this.running) return;
      for (const v of ev.data) {
        buf[fill++] = v;
        if (fill === size) {
          const data = new AudioData({format: "f32-planar", sampleRate: ctx.sampleRate, numberOfFrames: size,
            numberOfChannels: 1, timestamp: at, data: buf});
          at += FRAME_US;
          this.encoder.encode(data);
          data.close();
          buf = new Float32Array(size);
          fill = 0;
        }
      }
    };
    this.node = node;
  }

  // MediaRecorder: its slices of the container stream go out in order (Blob.arrayBuffer() is async, so the
  // sends are chained); data-live-sent-ms is how much audio has gone out, for the tests.
  captureRecorder() {
    document.body.dataset.liveCapture = "mediarecorder";
    document.body.dataset.liveContainer = this.recorderType.container;
    const recorder = new MediaRecorder(this.stream, {mimeType: this.recorderType.mime, audioBitsPerSecond: 24000});
    const t0 = performance.now();
    recorder.ondataavailable = (ev) => {
      if (!ev.data || !ev.data.size) return;
      const blob = ev.data;
      this.sending = this.sending.then(async () => {
        const bytes = await blob.arrayBuffer();
        if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
        this.frames += 1;
        document.body.dataset.liveFrames = String(this.frames);
        document.body.dataset.liveSentMs = String(Math.round(performance.now() - t0));
      });
    };
    recorder.onerror = (ev) => say(String(ev.error || ev), "error");
    this.running = true;
    recorder.start(RECORDER_SLICE_MS);
    this.recorder = recorder;
  }

  async end() {
    this.running = false;
    if (this.recorder && this.recorder.state !== "inactive") {
      const stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, {once: true}));
      this.recorder.stop();  // hands over the last slice, then "stop"
      await stopped;
    }
    await this.sending;
    if (this.encoder && this.encoder.state === "configured") await this.encoder.flush();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({type: "end"}));
    this.stop(true);
  }

  stop(keepSocket) {
    this.running = false;
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    this.recorder = null;
    if (this.node) this.node.disconnect();
    this.node = null;
    if (this.stream) this.stream.getTracks().forEach((tr) => tr.stop());
    this.stream = null;
    if (this.audio) this.audio.close();
    this.audio = null;
    if (!keepSocket && this.ws) this.ws = null;
    session = null;
    endBtn.disabled = true;
    startBtn.disabled = !picker.result.to.length;
  }
}

startBtn.addEventListener("click", async () => {
  if (!picker.result.to.length) {
    say(t("Pick the targets first"), "error");
    return;
  }
  say(t("Connecting…"));
  startBtn.disabled = true;
  session = new Session();
  try {
    await session.start({to: picker.result.to, class: $("#live-class").value, title: $("#live-title").value});
  } catch (err) {
    say(err.message || explain(err), "error");
    session.stop(false);
  }
});

endBtn.addEventListener("click", () => { if (session) session.end(); });

await picker.load();
loaded();
