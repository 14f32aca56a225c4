// whisperx-serve web page: upload, follow each task live, read and play the transcript.
// Plain browser JavaScript, no build step. The protocol it speaks is the service's own:
// POST /speech-to-text (XHR, so the browser reports upload progress), WS /ws/tasks/{id}
// (a snapshot frame, events with a per-task seq, a normal close after the terminal event;
// ?after_seq=N resumes), GET /tasks/{id}/progress when WebSockets fail, GET /task/{id}.
"use strict";

const KEY_STORAGE = "whisperx-serve.api-key";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STAGE_TEXT = {
  uploading: "Uploading",
  queued: "Queued",
  transcribing: "Transcribing",
  aligning: "Aligning words",
  diarizing: "Finding speakers",
  complete: "Complete",
};
const POLL_MS = 1000;
const WS_FAILURES_BEFORE_POLLING = 2;
const PAGE_SIZE = 10;

const $ = (sel, root = document) => root.querySelector(sel);

// Everything the page knows, also on window for people (and tests) looking in.
const state = {
  views: [],            // one per upload or URL submission, in order
  byTask: new Map(),    // task id -> view
  open: null,           // the task shown in the viewer: {task, words, names}
  list: { status: "", offset: 0, total: 0, retry: null },
  blobUrl: null,
};
window.wxs = state;

// ------------------------------------------------------------------ API key and requests

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(headers = {}) {
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

class ApiError extends Error {
  constructor(status, body) {
    const b = body && typeof body === "object" ? body : {};
    super(b.user_message || `The server answered ${status}.`);
    this.status = status;
    this.code = b.error_code || `http_${status}`;
    this.userMessage = this.message;
    this.detail = b.technical_detail || "";
  }
}

function parseError(status, text, retryAfter = null) {
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  const wait = retryAfterSeconds(retryAfter);
  if (!body?.user_message && (status === 429 || status === 503)) {
    // busy (a proxy's bare 429/503, say): say when to try again, from Retry-After
    const when = wait == null ? "in a little while" : `in ${wait} s`;
    body = { error_code: status === 429 ? "rate_limited" : "overloaded", user_message: `The service is busy; try again ${when}.`, technical_detail: (text || "").slice(0, 300) };
  }
  if (!body && text) body = { user_message: `The server answered ${status}.`, technical_detail: text.slice(0, 300) };
  const err = new ApiError(status, body);
  err.retryAfter = wait;
  if (status === 401) askForKey(err);
  return err;
}

function retryAfterSeconds(value) {
  // Retry-After: delay-seconds or an HTTP date
  if (value == null || value === "") return null;
  const n = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return isFinite(n) ? Math.max(1, Math.ceil(n)) : null;
}

async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(path, { ...options, headers: authHeaders({ ...(options.headers || {}) }) });
  } catch (e) {
    throw new ApiError(0, { error_code: "network", user_message: "The service could not be reached.", technical_detail: String(e) });
  }
  if (!res.ok) throw parseError(res.status, await res.text(), res.headers.get("Retry-After"));
  return res;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function askForKey(err) {
  const alert = $("#auth-alert");
  alert.hidden = false;
  alert.textContent = apiKey()
    ? `The API key was refused (${err.userMessage}). Enter a valid key under “API key”.`
    : "This service needs an API key. Enter it under “API key” above, then try again.";
  $("#key-panel").open = true;
  $("#api-key").focus();
}

function showKeyState() {
  $("#key-state").textContent = apiKey() ? "(set for this tab)" : "(none)";
}

function setupKey() {
  showKeyState();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("#api-key").value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    $("#api-key").value = "";
    $("#auth-alert").hidden = true;
    showKeyState();
    $("#key-panel").open = false;
    refreshList();
    for (const view of state.views) if (view.needsKey) follow(view);
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("#api-key").value = "";
    showKeyState();
  });
}

// ------------------------------------------------------------------ submitting

function submitParams() {
  const params = new URLSearchParams();
  const language = $("#opt-language").value;
  if (language) params.set("language", language);
  const diarize = $("#opt-diarize").checked;
  params.set("diarize", diarize ? "true" : "false");
  const speakers = $("#opt-speakers").value.trim();
  if (diarize && speakers) params.set("num_speakers", speakers);
  const model = $("#opt-model").value;
  if (model) params.set("model", model);
  return params;
}

function uploadFile(view, file, params) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/speech-to-text?${params}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setProgress(view, (100 * e.loaded) / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else reject(parseError(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After")));
    };
    xhr.onerror = () => reject(new ApiError(0, { error_code: "network", user_message: "The upload failed: the service could not be reached.", technical_detail: "XMLHttpRequest network error" }));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

async function submitFiles(files) {
  const params = submitParams();
  for (const file of files) {
    const view = newView(file.name);
    enterStage(view, "uploading");
    try {
      accepted(view, await uploadFile(view, file, params));
    } catch (err) {
      rejected(view, err);
    }
  }
}

async function submitUrl(url) {
  const name = url.split(/[?#]/)[0].split("/").pop() || url;
  const view = newView(name);
  enterStage(view, "uploading");
  view.els.stage.textContent = "Fetching the URL on the server";
  const form = new FormData();
  form.append("url", url);
  try {
    accepted(view, await apiJson(`/speech-to-text-url?${submitParams()}`, { method: "POST", body: form }));
  } catch (err) {
    rejected(view, err);
  }
}

async function loadModels() {
  // Offer a model choice only when the service serves more than its default.
  try {
    const { asr_models: names } = await apiJson("/models");
    const select = $("#opt-model");
    for (const name of names) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.append(option);
    }
    $("#model-field").hidden = names.length === 0;
  } catch { /* the default model it is */ }
}

function setupSubmit() {
  const input = $("#files");
  $("#choose").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = "";
    if (files.length) submitFiles(files);
  });
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) submitFiles(files);
  });
  $("#submit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("#url").value.trim();
    if (!url) { $("#url").focus(); return; }
    $("#url").value = "";
    submitUrl(url);
  });
}

// ------------------------------------------------------------------ progress cards

function newView(name, taskId = null) {
  const li = $("#card-template").content.firstElementChild.cloneNode(true);
  const els = {
    root: li, name: $(".name", li), badge: $(".badge", li), bar: $(".bar", li),
    pct: $(".pct", li), stage: $(".stage", li), detail: $(".detail", li),
    error: $(".error", li), userMessage: $(".user-message", li), technical: $(".technical", li),
    open: $(".open", li), cancel: $(".cancel", li), del: $(".delete", li), dismiss: $(".dismiss", li),
  };
  els.name.textContent = name;
  li.dataset.view = String(state.views.length);
  if (taskId) li.dataset.task = taskId;
  els.bar.setAttribute("aria-label", `Progress of ${name}`);
  const view = {
    name, taskId, els, status: "uploading", stage: null, percentage: 0,
    stages: [], history: [], seqs: [], queuePositions: [], etas: [],
    lastSeq: null, wsUrls: [], reconnects: 0,
    transport: null, ws: null, wsFailures: 0, pollTimer: null, queueTimer: null,
    terminal: false, needsKey: false, gone: false,
  };
  els.open.addEventListener("click", () => openTask(view.taskId));
  els.cancel.addEventListener("click", () => cancelTask(view));
  els.del.addEventListener("click", () => deleteTask(view));
  els.dismiss.addEventListener("click", () => dismiss(view));
  state.views.push(view);
  $("#cards").prepend(li);
  $("#no-cards").hidden = true;
  setBadge(view, "uploading");
  return view;
}

function setBadge(view, status) {
  view.status = status;
  view.els.root.dataset.status = status;
  view.els.badge.textContent = status;
  const active = !TERMINAL.has(status) && status !== "uploading" && status !== "rejected";
  view.els.cancel.hidden = !active;
  view.els.del.hidden = !view.taskId;
  view.els.open.hidden = status !== "completed";
}

function setProgress(view, pct) {
  const value = Math.max(0, Math.min(100, pct));
  view.percentage = value;
  const last = view.history[view.history.length - 1];
  if (!last || last[0] !== view.stage || last[1] !== value) view.history.push([view.stage, value]);
  view.els.bar.value = value;
  view.els.pct.textContent = `${Math.floor(value)} %`;
}

function enterStage(view, stage) {
  if (view.stage === stage) return;
  view.stage = stage;
  view.stages.push(stage);
  view.els.stage.textContent = STAGE_TEXT[stage] || stage;
}

function accepted(view, body) {
  view.taskId = body.identifier;
  view.els.root.dataset.task = view.taskId;
  state.byTask.set(view.taskId, view);
  enterStage(view, "queued");
  setProgress(view, 0); // the upload's bar hands over to the task's
  setBadge(view, body.status);
  refreshList();
  follow(view);
}

function rejected(view, err) {
  setBadge(view, "rejected");
  showError(view, err.code, err.userMessage, err.detail);
}

function showError(view, code, userMessage, detail) {
  view.els.error.hidden = false;
  view.els.userMessage.textContent = userMessage || "The task failed.";
  view.els.technical.textContent = `${code || "error"}: ${detail || "(no detail)"}`;
}

function formatEta(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s left`;
  return `about ${Math.round(seconds / 60)} min left`;
}

function applyState(view, s) {
  // s: {status, stage, percentage, message, eta_seconds, queue_position?}
  if (s.stage) enterStage(view, s.stage);
  if (typeof s.percentage === "number" && s.percentage >= view.percentage) setProgress(view, s.percentage);
  setBadge(view, s.status);
  const parts = [];
  if (s.message) parts.push(s.message);
  if (s.status === "queued" && view.queuePosition) parts.push(`position ${view.queuePosition} in the queue`);
  if (!TERMINAL.has(s.status)) {
    const eta = formatEta(s.eta_seconds);
    if (eta) { parts.push(eta); view.etas.push(eta); }
  }
  if (view.transport === "polling" && !TERMINAL.has(s.status)) parts.push("following by polling");
  view.els.detail.textContent = parts.join(" · ");
  if (s.status === "queued") watchQueue(view);
}

function notePosition(view, position) {
  view.queuePosition = position;
  if (position) view.queuePositions.push(position);
}

function watchQueue(view) {
  if (view.queueTimer || view.transport === "polling") return;
  const tick = async () => {
    view.queueTimer = null;
    if (view.terminal || view.gone || view.status !== "queued") return;
    try {
      const p = await apiJson(`/tasks/${encodeURIComponent(view.taskId)}/progress`);
      notePosition(view, p.queue_position);
      if (view.status === "queued") applyState(view, { status: view.status, stage: view.stage, eta_seconds: p.eta_seconds });
    } catch { /* the WebSocket still reports the status */ }
    if (view.status === "queued") view.queueTimer = setTimeout(tick, 2000);
  };
  view.queueTimer = setTimeout(tick, 0);
}

// ------------------------------------------------------------------ following a task

function wsUrl(view) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const after = view.lastSeq == null ? 0 : view.lastSeq;
  return `${proto}//${location.host}/ws/tasks/${encodeURIComponent(view.taskId)}?after_seq=${after}`;
}

function follow(view) {
  view.needsKey = false;
  if (view.terminal || view.gone) return;
  if (view.transport === "polling" || typeof WebSocket === "undefined") return startPolling(view);
  const url = wsUrl(view);
  view.wsUrls.push(url);
  const key = apiKey();
  let ws;
  try {
    ws = key ? new WebSocket(url, ["whisperx-serve", `bearer.${key}`]) : new WebSocket(url);
  } catch {
    return wsFailed(view, null);
  }
  view.ws = ws;
  view.transport = "websocket";
  let frames = 0;
  ws.onmessage = (msg) => {
    let frame;
    try { frame = JSON.parse(msg.data); } catch { return; }
    frames += 1;
    view.wsFailures = 0;
    onFrame(view, frame);
  };
  ws.onclose = (e) => {
    if (view.ws === ws) view.ws = null;
    if (view.terminal || view.gone) return;
    if (e.code === 4404) {
      view.terminal = true;
      setBadge(view, "failed");
      showError(view, "task_not_found", "This task no longer exists.", e.reason);
      return;
    }
    if (e.code === 4401) {
      view.needsKey = true;
      askForKey(new ApiError(401, { user_message: e.reason || "unauthorized" }));
      return;
    }
    wsFailed(view, frames);
  };
}

function wsFailed(view, frames) {
  if (!frames) view.wsFailures += 1;
  if (view.wsFailures >= WS_FAILURES_BEFORE_POLLING) return startPolling(view);
  view.reconnects += 1;
  const delay = Math.min(5000, 250 * 2 ** view.wsFailures);
  setTimeout(() => follow(view), delay);
}

function onFrame(view, frame) {
  if (frame.type === "snapshot") {
    if (frame.error) showError(view, frame.error.error_code, frame.error.user_message, frame.error.technical_detail);
    applyState(view, frame);
    return;
  }
  if (typeof frame.seq !== "number" || (view.lastSeq != null && frame.seq <= view.lastSeq)) return;
  view.seqs.push(frame.seq);
  view.lastSeq = frame.seq;
  if (frame.type === "error") {
    showError(view, frame.error_code, frame.user_message, frame.technical_detail);
    applyState(view, { status: frame.status || "failed", stage: null });
  } else {
    applyState(view, frame);
  }
  if (TERMINAL.has(frame.status)) finished(view);
}

function startPolling(view) {
  if (view.pollTimer || view.terminal || view.gone) return;
  view.transport = "polling";
  const tick = async () => {
    view.pollTimer = null;
    if (view.terminal || view.gone) return;
    try {
      const p = await apiJson(`/tasks/${encodeURIComponent(view.taskId)}/progress`);
      notePosition(view, p.queue_position);
      applyState(view, {
        status: p.status, stage: p.progress_stage, percentage: p.progress_percentage,
        message: p.message, eta_seconds: p.eta_seconds,
      });
      if (TERMINAL.has(p.status)) {
        if (p.status === "failed") showError(view, p.error_code, p.error, p.technical_detail || "");
        finished(view);
        return;
      }
    } catch (err) {
      if (err.status === 404) { view.terminal = true; showError(view, err.code, err.userMessage, err.detail); return; }
      if (err.status === 401) { view.needsKey = true; return; }
      if (err.retryAfter != null) { // busy: wait as long as the service asks
        view.els.detail.textContent = err.userMessage;
        view.pollTimer = setTimeout(tick, Math.min(err.retryAfter, 60) * 1000);
        return;
      }
    }
    view.pollTimer = setTimeout(tick, POLL_MS);
  };
  view.pollTimer = setTimeout(tick, 0);
}

function finished(view) {
  view.terminal = true;
  if (view.ws) { const ws = view.ws; view.ws = null; ws.close(1000); }
  view.els.detail.textContent = view.status === "completed" ? "Done" : "";
  refreshList();
  if (view.status === "completed" && (!state.open || state.autoOpen)) {
    state.autoOpen = true;
    openTask(view.taskId);
  }
}

async function cancelTask(view) {
  try {
    const p = await apiJson(`/task/${encodeURIComponent(view.taskId)}/cancel`, { method: "POST" });
    if (view.transport === "polling" || !view.ws) applyState(view, { status: p.status, stage: p.progress_stage });
  } catch (err) {
    showError(view, err.code, err.userMessage, err.detail);
  }
}

async function deleteTask(view) {
  const btn = view.els.del;
  if (btn.dataset.confirm !== "1") {
    btn.dataset.confirm = "1";
    btn.textContent = "Really delete?";
    setTimeout(() => { btn.dataset.confirm = ""; btn.textContent = "Delete"; }, 4000);
    return;
  }
  try {
    await api(`/task/${encodeURIComponent(view.taskId)}/delete`, { method: "DELETE" });
  } catch (err) {
    if (err.status !== 404) { showError(view, err.code, err.userMessage, err.detail); return; }
  }
  if (state.open && state.open.task.identifier === view.taskId) closeViewer();
  dismiss(view);
  refreshList();
}

function dismiss(view) {
  view.gone = true;
  if (view.ws) view.ws.close(1000);
  clearTimeout(view.pollTimer);
  clearTimeout(view.queueTimer);
  view.els.root.remove();
  $("#no-cards").hidden = $("#cards").children.length > 0;
}

// ------------------------------------------------------------------ transcript viewer

function speakerIndex(task, label) {
  const speakers = task.result?.speakers || [];
  const i = speakers.indexOf(label);
  return i < 0 ? speakers.length : i;
}

function speakerName(label) {
  return (state.open?.names || {})[label] || label;
}

function fmtTime(t) {
  const s = Math.max(0, Math.floor(t));
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const mm = h ? String(m % 60).padStart(2, "0") : String(m);
  return `${h ? `${h}:` : ""}${mm}:${String(s % 60).padStart(2, "0")}`;
}

async function openTask(taskId) {
  let task;
  try {
    task = await apiJson(`/task/${encodeURIComponent(taskId)}`);
  } catch (err) {
    let view = state.byTask.get(taskId);
    if (!view && err.status === 401) return; // the key prompt is up
    if (!view) { // opened by link or list: say so on a card of its own
      view = newView(taskId);
      view.els.root.dataset.task = taskId;
      view.terminal = true;
      setBadge(view, err.status === 404 ? "not found" : "error");
    }
    showError(view, err.code, err.userMessage, err.detail);
    return;
  }
  if (!TERMINAL.has(task.status)) {
    if (!state.byTask.has(taskId)) {
      const view = newView(task.file_name || taskId, taskId);
      state.byTask.set(taskId, view);
      setBadge(view, task.status);
      follow(view);
    }
    return;
  }
  if (task.status !== "completed") {
    let view = state.byTask.get(taskId);
    if (!view) {
      view = newView(task.file_name || taskId, taskId);
      state.byTask.set(taskId, view);
      view.terminal = true;
    }
    setBadge(view, task.status);
    if (task.error) showError(view, task.error.error_code, task.error.user_message, task.error.technical_detail);
    return;
  }
  showTranscript(task);
}

function showTranscript(task) {
  const viewer = $("#viewer");
  state.open = { task, words: [], names: { ...(task.speaker_names || {}) }, current: -1 };
  history.replaceState(null, "", `#task=${task.identifier}`);
  viewer.hidden = false;
  const r = task.result || {};
  const dur = task.audio_duration ? ` · ${fmtTime(task.audio_duration)}` : "";
  const timing = r.word_timestamps ? ` · word times: ${r.word_timestamps}` : "";
  $("#viewer-meta").textContent = `${task.file_name || task.identifier}${dur} · ${r.language || "?"}${timing}`;
  setAudio(task);
  renderSpeakers(task);
  renderTranscript(task);
  viewer.scrollIntoView({ block: "start" });
}

async function setAudio(task) {
  const player = $("#player");
  if (state.blobUrl) { URL.revokeObjectURL(state.blobUrl); state.blobUrl = null; }
  const src = `/task/${encodeURIComponent(task.identifier)}/audio`;
  if (!apiKey()) {
    player.src = src; // the browser streams it with range requests
    return;
  }
  // An <audio> element cannot send an Authorization header, and the key never goes in a
  // URL: with a key the file is fetched once and played from memory.
  try {
    const blob = await (await api(src)).blob();
    state.blobUrl = URL.createObjectURL(blob);
    player.src = state.blobUrl;
  } catch (err) {
    $("#viewer-meta").textContent += ` · audio unavailable: ${err.userMessage}`;
  }
}

function renderSpeakers(task) {
  const speakers = task.result?.speakers || [];
  const box = $("#speakers");
  const list = $("#speaker-list");
  list.replaceChildren();
  box.hidden = speakers.length === 0;
  $("#speaker-status").textContent = "";
  speakers.forEach((label, i) => {
    const li = document.createElement("li");
    li.className = `spk-${i % 8}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    const lab = document.createElement("label");
    lab.htmlFor = `spk-name-${i}`;
    lab.textContent = label;
    const input = document.createElement("input");
    input.id = `spk-name-${i}`;
    input.type = "text";
    input.maxLength = 100;
    input.placeholder = "Name";
    input.dataset.speaker = label;
    input.value = state.open.names[label] || "";
    input.addEventListener("change", () => renameSpeaker(label, input.value.trim()));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") input.blur(); });
    li.append(swatch, lab, input);
    list.append(li);
  });
}

async function renameSpeaker(label, name) {
  const open = state.open;
  if (!open) return;
  const names = { ...open.names, [label]: name };
  if (!name) delete names[label];
  const status = $("#speaker-status");
  try {
    const body = await apiJson(`/task/${encodeURIComponent(open.task.identifier)}/speakers`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ names }),
    });
    open.names = body.names;
    status.textContent = "Saved with the task.";
    for (const el of document.querySelectorAll(`#transcript .who[data-speaker="${CSS.escape(label)}"]`)) {
      el.textContent = speakerName(label);
    }
  } catch (err) {
    status.textContent = `Not saved: ${err.userMessage}`;
  }
}

// A segment splits where its words change speaker (diarization labels each word), so
// each paragraph has one speaker, its colour and its (renamable) name.
function speakerRuns(seg) {
  const words = seg.words || [];
  if (!words.length) return [{ speaker: seg.speaker || null, start: seg.start, words: [], text: seg.text }];
  const runs = [];
  for (const w of words) {
    const speaker = w.speaker || seg.speaker || null;
    let run = runs[runs.length - 1];
    if (!run || run.speaker !== speaker) {
      run = { speaker, start: typeof w.start === "number" ? w.start : seg.start, words: [] };
      runs.push(run);
    }
    run.words.push(w);
  }
  return runs;
}

function renderTranscript(task) {
  const box = $("#transcript");
  box.replaceChildren();
  const words = [];
  const segments = task.result?.segments || [];
  if (!segments.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No speech was found.";
    box.append(p);
  }
  for (const seg of segments) {
    for (const run of speakerRuns(seg)) {
      const p = document.createElement("p");
      p.className = "seg";
      if (run.speaker) p.classList.add(`spk-${speakerIndex(task, run.speaker) % 8}`);
      const time = document.createElement("button");
      time.type = "button";
      time.className = "time";
      time.textContent = fmtTime(run.start);
      time.setAttribute("aria-label", `Play from ${fmtTime(run.start)}`);
      time.addEventListener("click", () => seek(run.start));
      p.append(time);
      if (run.speaker) {
        const who = document.createElement("span");
        who.className = "who";
        who.dataset.speaker = run.speaker;
        who.textContent = speakerName(run.speaker);
        p.append(who);
      }
      const text = document.createElement("span");
      text.className = "text";
      if (run.words.length) {
        run.words.forEach((w, i) => {
          if (i) text.append(" ");
          const span = document.createElement("span");
          span.className = "w";
          span.textContent = w.word.trim();
          if (typeof w.start === "number") {
            span.dataset.start = w.start;
            words.push({ start: w.start, end: typeof w.end === "number" ? w.end : w.start, el: span });
          }
          text.append(span);
        });
      } else {
        text.textContent = (run.text || "").trim();
      }
      p.append(text);
      box.append(p);
    }
  }
  words.sort((a, b) => a.start - b.start);
  state.open.words = words;
}

function seek(t) {
  const player = $("#player");
  player.currentTime = t;
  highlight(t);
}

function wordAt(t) {
  const words = state.open?.words || [];
  let lo = 0, hi = words.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (words[mid].start <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  if (found >= 0 && t > words[found].end + 0.5) return -1; // in a pause
  return found;
}

function highlight(t) {
  const open = state.open;
  if (!open) return;
  const i = wordAt(t);
  if (i === open.current) return;
  if (open.current >= 0 && open.words[open.current]) {
    const old = open.words[open.current].el;
    old.classList.remove("now");
    old.removeAttribute("aria-current");
  }
  open.current = i;
  if (i >= 0) {
    const el = open.words[i].el;
    el.classList.add("now");
    el.setAttribute("aria-current", "true");
  }
}

function setupViewer() {
  const player = $("#player");
  let raf = 0;
  const loop = () => { highlight(player.currentTime); raf = player.paused ? 0 : requestAnimationFrame(loop); };
  player.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(loop); });
  player.addEventListener("timeupdate", () => highlight(player.currentTime));
  player.addEventListener("seeked", () => highlight(player.currentTime));
  $("#transcript").addEventListener("click", (e) => {
    const w = e.target.closest(".w[data-start]");
    if (w) seek(Number(w.dataset.start));
  });
  $("#viewer-close").addEventListener("click", closeViewer);
  for (const btn of document.querySelectorAll(".downloads button")) {
    btn.addEventListener("click", () => download(btn.dataset.format));
  }
}

function closeViewer() {
  $("#viewer").hidden = true;
  const player = $("#player");
  player.pause();
  player.removeAttribute("src");
  player.load();
  state.open = null;
  state.autoOpen = false;
  history.replaceState(null, "", location.pathname);
}

async function download(format) {
  const open = state.open;
  if (!open) return;
  try {
    const res = await api(`/task/${encodeURIComponent(open.task.identifier)}/result?format=${format}`);
    const disposition = res.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const blob = await res.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = match ? match[1] : `${open.task.identifier}.${format}`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    $("#speaker-status").textContent = `Download failed: ${err.userMessage}`;
  }
}

// ------------------------------------------------------------------ task list

async function refreshList() {
  const { status, offset } = state.list;
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset, sort: "newest" });
  if (status) params.set("status", status);
  let page;
  try {
    page = await apiJson(`/task/all?${params}`);
  } catch (err) {
    $("#list-range").textContent = err.status === 401 ? "An API key is needed." : err.userMessage;
    if (err.retryAfter != null && !state.list.retry) { // busy: try once more when it says
      state.list.retry = setTimeout(() => { state.list.retry = null; refreshList(); }, Math.min(err.retryAfter, 60) * 1000);
    }
    return;
  }
  state.list.total = page.total;
  const body = $("#list-body");
  body.replaceChildren();
  for (const t of page.tasks) {
    const tr = document.createElement("tr");
    tr.dataset.task = t.identifier;
    tr.dataset.status = t.status;
    const file = document.createElement("td");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "link";
    btn.textContent = t.file_name || t.identifier.slice(0, 8);
    btn.title = t.identifier;
    btn.addEventListener("click", () => { state.autoOpen = false; openTask(t.identifier); });
    file.append(btn);
    const st = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = t.status;
    badge.textContent = t.status === "processing" ? `${t.status} ${Math.floor(t.progress_percentage)} %` : t.status;
    st.append(badge);
    const created = document.createElement("td");
    const when = new Date(t.created_at);
    const today = when.toDateString() === new Date().toDateString();
    created.textContent = today
      ? when.toLocaleTimeString([], { timeStyle: "short" })
      : when.toLocaleDateString([], { dateStyle: "short" });
    created.title = when.toLocaleString();
    const len = document.createElement("td");
    len.textContent = t.audio_duration ? fmtTime(t.audio_duration) : "–";
    tr.append(file, st, created, len);
    body.append(tr);
  }
  if (!page.tasks.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 4;
    td.className = "muted";
    td.textContent = status ? `No ${status} tasks.` : "No tasks yet.";
    tr.append(td);
    body.append(tr);
  }
  const first = page.total ? offset + 1 : 0;
  const last = Math.min(offset + page.tasks.length, page.total);
  $("#list-range").textContent = `${first}–${last} of ${page.total}`;
  $("#list-prev").disabled = offset === 0;
  $("#list-next").disabled = offset + PAGE_SIZE >= page.total;
}

function setupList() {
  $("#list-status").addEventListener("change", (e) => {
    state.list.status = e.target.value;
    state.list.offset = 0;
    refreshList();
  });
  $("#list-refresh").addEventListener("click", refreshList);
  $("#list-prev").addEventListener("click", () => {
    state.list.offset = Math.max(0, state.list.offset - PAGE_SIZE);
    refreshList();
  });
  $("#list-next").addEventListener("click", () => {
    state.list.offset += PAGE_SIZE;
    refreshList();
  });
}

// ------------------------------------------------------------------ start

setupKey();
setupSubmit();
setupViewer();
setupList();
refreshList();
loadModels();
const linked = /^#task=([\w-]{1,64})$/.exec(location.hash);
if (linked) openTask(linked[1]);
