// The play page: asks the server for the next frame as soon as the last one is drawn (at most one
// in flight), with the action made of the keys held at that moment. No library, no network but
// this page's own server. window.wmlabPlay exposes the numbers shown, for tests and measurements.
"use strict";

const COMMAND_KEYS = { r: "reset", p: "pause", f: "dream_from_real", ".": "step_once" };
const KEY_NAMES = { " ": "space", ArrowUp: "↑", ArrowDown: "↓", ArrowLeft: "←", ArrowRight: "→" };

const $ = (id) => document.getElementById(id);
const play = {
  info: null,
  socket: null,
  held: new Set(),
  paused: false,
  inFlight: false,
  seq: 0,
  lastSent: 0,
  timer: null,
  speed: 0,
  frames: 0,
  frameTimes: [],
  latencies: [],
  pendingKey: null,
  recording: false,
  scale: 5,
  lastFrame: null,
  statsShownAt: 0,
  turns: [],  // actions of key presses waiting for their step, on a turn-based (no no-op) Discrete space
  stats: { fps: 0, model_ms: null, env_ms: null, latency_ms: null, step: 0 },
  errors: [],
};
window.wmlabPlay = play;

// --- the connection --------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  play.socket = new WebSocket(`${scheme}://${location.host}/ws`);
  play.socket.onmessage = (event) => receive(JSON.parse(event.data));
  play.socket.onclose = (event) => {
    play.inFlight = false;
    show(`disconnected from the server (${event.code}${event.reason ? ": " + event.reason : ""}); reload the page to play again`);
  };
}

function send(message) {
  if (play.socket && play.socket.readyState === WebSocket.OPEN) play.socket.send(JSON.stringify(message));
}

function receive(message) {
  if (message.type === "hello") return setup(message);
  if (message.type === "frame") return drawFrame(message);
  if (message.type === "error") {
    play.errors.push(message.message);
    show(message.message);
    play.inFlight = false;
    return pump();
  }
  if (message.type === "recording") return recorded(message);
}

// --- set-up from the server's description ----------------------------------------------------

function setup(info) {
  play.info = info;
  play.scale = Math.max(1, Math.floor(320 / Math.max(info.width, info.height)));
  for (const id of ["dream", "real", "difference"]) {
    const canvas = $(id);
    canvas.width = info.width * play.scale;
    canvas.height = info.height * play.scale;
  }
  $("model").textContent = `${info.family} world model · ${info.algorithm} on ${info.env} · ${info.run}`;
  const params = new URLSearchParams(location.search);
  const speed = params.has("speed") ? Number(params.get("speed")) : (info.render_fps || 0);
  setSpeed(speed);
  if (params.get("real") === "0") { $("show-real").checked = false; toggleReal(); }
  if (info.real_environment === false) {  // latent actions: no environment takes them
    $("show-real").checked = false;
    $("show-real").disabled = true;
    $("dream-from-real").disabled = true;
    document.body.classList.add("no-real");
  }
  buildKnobs(info.knobs);
  buildLegend(info.controls);
  if (!info.upload) {
    $("upload").disabled = true;
    $("upload-label").title = info.upload_refusal;
    $("upload-label").append(` — not for this model: ${info.upload_refusal}`);
  }
}

function setSpeed(value) {
  const select = $("speed");
  if (![...select.options].some((option) => Number(option.value) === value)) {
    const option = document.createElement("option");
    option.value = String(value);
    option.textContent = `${value} FPS (the environment's)`;
    select.append(option);
  }
  select.value = String(value);
  play.speed = value;
}

function buildKnobs(knobs) {
  const holder = $("knobs");
  holder.textContent = "";
  for (const knob of knobs) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    const value = document.createElement("b");
    input.type = "range";
    input.id = `knob-${knob.name}`;
    input.min = knob.minimum; input.max = knob.maximum; input.step = knob.step; input.value = knob.value;
    value.textContent = String(knob.value);
    input.oninput = () => { value.textContent = input.value; };
    input.onchange = () => send({ type: "settings", [knob.name]: Number(input.value) });
    label.append(`${knob.label} `, input, " ", value);
    holder.append(label);
  }
}

function keyLabel(key) {
  return KEY_NAMES[key] || key.toUpperCase();
}

function buildLegend(controls) {
  const body = $("keys").tBodies[0];
  body.textContent = "";
  const row = (keys, what) => {
    const tr = body.insertRow();
    tr.insertCell().innerHTML = keys;
    tr.insertCell().textContent = what;
  };
  const kbd = (key) => `<kbd>${escapeHtml(keyLabel(key))}</kbd>`;
  if (controls.kind === "discrete") {
    for (const action of controls.actions) {
      const chords = action.keys.map((chord) => chord.map(kbd).join(" + ")).join(" or ");
      row(chords || "(no key)", `${action.name}${action.index === controls.idle ? " (when no key is held)" : ""}`);
    }
    if (controls.turn_based) row("", "no no-op action: one step per key press");
  } else {
    for (const dimension of controls.dimensions) {
      row(`${kbd(dimension.minus)} / ${kbd(dimension.plus)}`, `action[${dimension.index}] to ${dimension.low} / ${dimension.high} (rests at ${dimension.rest})`);
    }
  }
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// --- actions from keys -----------------------------------------------------------------------

function mappedKeys() {
  const controls = play.info.controls;
  if (controls.kind === "box") return new Set(controls.dimensions.flatMap((d) => [d.minus, d.plus]));
  return new Set(controls.actions.flatMap((a) => a.keys.flat()));
}

function currentAction() {
  const controls = play.info.controls;
  if (controls.kind === "box") {
    return controls.dimensions.map((d) => {
      const push = (play.held.has(d.plus) ? 1 : 0) - (play.held.has(d.minus) ? 1 : 0);
      return push > 0 ? d.high : push < 0 ? d.low : d.rest;
    });
  }
  // The action whose chord is the largest one fully held; ties go to the first.
  let best = controls.idle, size = 0;
  for (const action of controls.actions) {
    for (const chord of action.keys) {
      if (chord.length > size && chord.every((key) => play.held.has(key))) { best = action.index; size = chord.length; }
    }
  }
  return best;
}

function normalKey(event) {
  return event.key.length === 1 ? event.key.toLowerCase() : event.key;
}

document.addEventListener("keydown", (event) => {
  if (!play.info || event.target.tagName === "INPUT" && event.target.type !== "checkbox" && event.target.type !== "range") return;
  const key = normalKey(event);
  if (mappedKeys().has(key)) {
    event.preventDefault();
    if (event.repeat || play.held.has(key)) return;
    play.held.add(key);
    // Key-to-frame latency: from the key event to the first frame drawn with its action.
    play.pendingKey = { time: event.timeStamp, seq: null };
    if (turnBased()) play.turns.push(currentAction());
    pump(true);
    return;
  }
  const command = COMMAND_KEYS[key];
  if (command && !event.repeat) { event.preventDefault(); runCommand(command); }
});

document.addEventListener("keyup", (event) => {
  const key = normalKey(event);
  if (play.held.delete(key)) pump(true);
});
window.addEventListener("blur", () => play.held.clear());

function runCommand(command) {
  if (command === "pause") return togglePause();
  if (command === "step_once") { if (play.paused) requestStep(); return; }
  play.inFlight = true;
  send(command === "reset" ? { type: "reset" } : { type: command });
}

// --- the frame loop --------------------------------------------------------------------------

function turnBased() {
  return play.info.controls.kind === "discrete" && play.info.controls.turn_based;
}

function pump(now) {
  if (!play.info || play.paused || play.inFlight) return;
  if (turnBased() && play.turns.length === 0) return;
  const interval = play.speed > 0 ? 1000 / play.speed : 0;
  const wait = play.lastSent + interval - performance.now();
  if (wait > 0 && !now) {
    if (play.timer === null) play.timer = setTimeout(() => { play.timer = null; pump(); }, wait);
    return;
  }
  requestStep();
}

function requestStep() {
  if (play.inFlight) return;
  if (play.timer !== null) { clearTimeout(play.timer); play.timer = null; }
  play.seq += 1;
  play.inFlight = true;
  play.lastSent = performance.now();
  if (play.pendingKey && play.pendingKey.seq === null) play.pendingKey.seq = play.seq;
  let action = currentAction();
  if (turnBased()) action = play.turns.length ? play.turns.shift() : (action === null ? 0 : action);  // '.' while paused: action 0
  send({ type: "step", action, seq: play.seq });
}

function rgbToImage(base64, width, height) {
  const text = atob(base64);
  const image = new ImageData(width, height);
  const data = image.data;
  for (let i = 0, j = 0; i < text.length; i += 3, j += 4) {
    data[j] = text.charCodeAt(i); data[j + 1] = text.charCodeAt(i + 1); data[j + 2] = text.charCodeAt(i + 2); data[j + 3] = 255;
  }
  return image;
}

// One small canvas at the model's size, drawn scaled up onto each pane with smoothing off.
const scratch = document.createElement("canvas");
const scratchContext = scratch.getContext("2d");
function paint(id, image) {
  const canvas = $(id), context = canvas.getContext("2d");
  if (scratch.width !== image.width || scratch.height !== image.height) { scratch.width = image.width; scratch.height = image.height; }
  scratchContext.putImageData(image, 0, 0);
  context.imageSmoothingEnabled = false;
  context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

function drawFrame(frame) {
  // Ask for the next frame first, so that the model computes it while this one is drawn.
  if (frame.seq === play.seq || frame.seq === 0) play.inFlight = false;
  pump();
  const { width, height } = play.info;
  const dream = rgbToImage(frame.dream, width, height);
  paint("dream", dream);
  let difference = null;
  if (frame.real) {
    const real = rgbToImage(frame.real, width, height);
    paint("real", real);
    const diff = new ImageData(width, height);
    let total = 0;
    for (let i = 0; i < diff.data.length; i += 4) {
      for (let c = 0; c < 3; c++) {
        const d = Math.abs(dream.data[i + c] - real.data[i + c]);
        diff.data[i + c] = d; total += d;
      }
      diff.data[i + 3] = 255;
    }
    difference = total / (width * height * 3);
    paint("difference", diff);
  }
  const now = performance.now();
  play.frames += 1;
  play.lastFrame = frame;
  if (frame.seq > 0) {
    play.frameTimes.push(now);
    if (play.frameTimes.length > 30) play.frameTimes.shift();
  } else {
    play.frameTimes = [];  // a restart: the rate is measured afresh
  }
  if (play.pendingKey && play.pendingKey.seq !== null && frame.seq >= play.pendingKey.seq) {
    play.latencies.push(now - play.pendingKey.time);
    if (play.latencies.length > 200) play.latencies.shift();
    play.pendingKey = null;
  }
  updateStats(frame, difference);
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function updateStats(frame, difference) {
  const times = play.frameTimes;
  const fps = times.length > 1 ? (times.length - 1) * 1000 / (times[times.length - 1] - times[0]) : 0;
  Object.assign(play.stats, { fps, model_ms: frame.model_ms, env_ms: frame.env_ms, latency_ms: median(play.latencies.slice(-20)), step: frame.step, difference });
  // The numbers on screen change four times a second: text layout on every frame costs frames.
  const now = performance.now();
  if (now - play.statsShownAt < 250 && frame.seq !== 0) return;
  play.statsShownAt = now;
  $("fps").textContent = fps ? fps.toFixed(1) : "–";
  $("model-ms").textContent = frame.model_ms.toFixed(1);
  $("env-ms").textContent = frame.real ? frame.env_ms.toFixed(2) : "–";
  $("latency").textContent = play.stats.latency_ms === null ? "–" : play.stats.latency_ms.toFixed(0);
  $("step").textContent = frame.step;
  $("dream-reward").textContent = frame.dream_reward.toFixed(3);
  $("real-reward").textContent = frame.real_reward === null ? "–" : frame.real_reward.toFixed(3);
  const notes = [];
  if (frame.source === "image") notes.push("dreaming from your image (no real counterpart)");
  if (frame.source === "real") notes.push("dreaming from the real frames");
  if (frame.end_predicted) notes.push("the model predicts the episode ends here");
  if (frame.dream_done) notes.push("the dream ended: R resets");
  if (frame.real_done) notes.push("the real episode ended");
  if (play.paused) notes.push("paused");
  $("state").textContent = notes.join(" · ");
  $("difference-caption").textContent = difference === null ? "difference" : `difference |dream − real| (mean ${difference.toFixed(1)})`;
}

// --- buttons ---------------------------------------------------------------------------------

function togglePause() {
  play.paused = !play.paused;
  $("pause").textContent = play.paused ? "resume (P)" : "pause (P)";
  $("pause").classList.toggle("active", play.paused);
  $("state").textContent = play.paused ? "paused" : "";
  pump();
}

function toggleReal() {
  const on = $("show-real").checked;
  document.body.classList.toggle("no-real", !on);
  play.inFlight = on;  // turning it on restarts both from one frame
  send({ type: "settings", real: on });
  if (!on) { play.inFlight = false; pump(); }
}

function recorded(message) {
  if (message.on) { show("recording…", true); return; }
  show(`recording saved in the run directory: ${message.name}`, true);
  const link = document.createElement("a");
  link.href = message.url;
  link.download = message.name;
  document.body.append(link);
  link.click();
  link.remove();
}

let messageTimer = null;
function show(text, info = false) {
  const element = $("message");
  element.textContent = text;
  element.classList.toggle("info", info);
  clearTimeout(messageTimer);
  if (play.socket && play.socket.readyState === WebSocket.OPEN) messageTimer = setTimeout(() => { element.textContent = ""; }, 8000);
}

$("reset").onclick = () => runCommand("reset");
$("pause").onclick = () => togglePause();
$("dream-from-real").onclick = () => runCommand("dream_from_real");
$("speed").onchange = () => { play.speed = Number($("speed").value); pump(); };
$("show-real").onchange = toggleReal;
$("stop-at-end").onchange = () => send({ type: "settings", stop_at_end: $("stop-at-end").checked });
$("record").onclick = () => {
  play.recording = !play.recording;
  $("record").classList.toggle("active", play.recording);
  $("record").textContent = play.recording ? "■ stop and download" : "● record";
  send({ type: "record", on: play.recording, format: $("record-format").value });
};
$("upload").onchange = () => {
  const file = $("upload").files[0];
  if (!file) return;
  if (!["image/png", "image/jpeg"].includes(file.type)) { show(`${file.name} is not a PNG or JPEG`); return; }
  if (file.size > play.info.max_upload_bytes) { show(`${file.name} is ${(file.size / 1024).toFixed(0)} KiB; at most ${play.info.max_upload_bytes / 1024} KiB`); return; }
  const reader = new FileReader();
  reader.onload = () => {
    play.inFlight = true;
    send({ type: "image", data: String(reader.result).split(",", 2)[1] });
    $("upload").value = "";
  };
  reader.readAsDataURL(file);
};

// A clicked button keeps no focus, so that space (a game key) cannot click it again.
for (const button of document.querySelectorAll("button")) button.addEventListener("click", () => button.blur());

connect();
