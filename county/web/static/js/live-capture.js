// The live page's AudioWorklet (loaded by live.js with audioWorklet.addModule): hands the microphone's samples
// to the page in 128-frame blocks, for browsers without MediaStreamTrackProcessor (Firefox, Safari).
class LiveCapture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length) this.port.postMessage(input[0].slice(0));
    return true;
  }
}
registerProcessor("live-capture", LiveCapture);
