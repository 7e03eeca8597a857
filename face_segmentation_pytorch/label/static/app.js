// The labelling page. Plain JavaScript, no build step, nothing from the network.
//
// The mask is a Uint8Array (1 = face) at the frame's own size; the brush sets every
// pixel whose centre lies within the radius of the stroke's path (so a saved mask is
// the stroke exactly, without anti-aliasing), the fill is a 4-connected flood fill.
// Saving sends the mask as a black-and-white PNG; the server writes it as 0/255.
"use strict";
(() => {
  const TOKEN = document.body.dataset.token;
  const $ = (id) => document.getElementById(id);
  const withToken = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
  const UNDO_BYTES = 256 * 1024 * 1024; // memory the undo history may use

  const S = {
    state: null, frame: null, w: 0, h: 0, pmap: null, mask: null, image: null,
    undo: [], redo: [], tool: "brush", radius: 8, threshold: 0.5, opacity: 0.5, savedOpacity: 0.5,
    zoom: 1, fit: true, dirty: false, labelled: false, drawing: false, last: null,
    modelId: null, loading: null, thresholdDrag: false, previewKey: "", saving: false,
  };

  const imageCanvas = $("image-canvas");
  const maskCanvas = $("mask-canvas");
  const imageCtx = imageCanvas.getContext("2d");
  const maskCtx = maskCanvas.getContext("2d");
  let overlay = null; // ImageData of the red overlay

  // ------------------------------------------------------------------ server

  async function api(path, options = {}) {
    const opts = Object.assign({}, options);
    opts.headers = Object.assign({ "X-Token": TOKEN }, options.headers || {});
    const r = await fetch(path, opts);
    if (!r.ok) {
      let msg = `${r.status} ${r.statusText}`;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r;
  }
  const getJSON = async (path) => (await api(path)).json();
  const postJSON = async (path, body) => (await api(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  })).json();

  async function fetchBitmap(path) {
    const blob = await (await api(path)).blob();
    // No colour conversion: grey levels of probability maps and masks arrive exactly.
    return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  }

  function greyOf(bitmap) {
    const c = document.createElement("canvas");
    c.width = bitmap.width;
    c.height = bitmap.height;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const out = new Uint8Array(c.width * c.height);
    for (let i = 0; i < out.length; i++) out[i] = d[4 * i];
    return out;
  }

  function setStatus(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }
  const fail = (e) => setStatus(e.message || String(e), true);

  // ------------------------------------------------------------------ drawing

  function renderMask(x0 = 0, y0 = 0, x1 = S.w, y1 = S.h) {
    if (!overlay || x1 <= x0 || y1 <= y0) return;
    const a = Math.round(S.opacity * 255);
    const d = overlay.data;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = y * S.w + x;
        const on = S.mask[i] === 1;
        d[4 * i] = 255;
        d[4 * i + 1] = 0;
        d[4 * i + 2] = 0;
        d[4 * i + 3] = on ? a : 0;
      }
    }
    maskCtx.putImageData(overlay, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function paintSegment(a, b, value) {
    const r = S.radius;
    const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x) - r));
    const x1 = Math.min(S.w - 1, Math.ceil(Math.max(a.x, b.x) + r));
    const y0 = Math.max(0, Math.floor(Math.min(a.y, b.y) - r));
    const y1 = Math.min(S.h - 1, Math.ceil(Math.max(a.y, b.y) + r));
    if (x1 < x0 || y1 < y0) return;
    const dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy, r2 = r * r;
    for (let y = y0; y <= y1; y++) {
      const cy = y + 0.5;
      for (let x = x0; x <= x1; x++) {
        const cx = x + 0.5;
        let t = len2 > 0 ? ((cx - a.x) * dx + (cy - a.y) * dy) / len2 : 0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        const ex = a.x + t * dx - cx, ey = a.y + t * dy - cy;
        if (ex * ex + ey * ey <= r2) S.mask[y * S.w + x] = value;
      }
    }
    renderMask(x0, y0, x1 + 1, y1 + 1);
  }

  function fill(p, value) {
    const x = Math.floor(p.x), y = Math.floor(p.y);
    if (x < 0 || y < 0 || x >= S.w || y >= S.h) return false;
    const start = y * S.w + x;
    const from = S.mask[start];
    if (from === value) return false;
    pushUndo();
    const stack = [start];
    S.mask[start] = value;
    while (stack.length) {
      const i = stack.pop();
      const px = i % S.w, py = (i - px) / S.w;
      if (px > 0 && S.mask[i - 1] === from) { S.mask[i - 1] = value; stack.push(i - 1); }
      if (px < S.w - 1 && S.mask[i + 1] === from) { S.mask[i + 1] = value; stack.push(i + 1); }
      if (py > 0 && S.mask[i - S.w] === from) { S.mask[i - S.w] = value; stack.push(i - S.w); }
      if (py < S.h - 1 && S.mask[i + S.w] === from) { S.mask[i + S.w] = value; stack.push(i + S.w); }
    }
    renderMask();
    return true;
  }

  function thresholded() {
    const t = S.threshold * 255;
    const m = new Uint8Array(S.w * S.h);
    for (let i = 0; i < m.length; i++) m[i] = S.pmap[i] > t ? 1 : 0;
    return m;
  }

  // ------------------------------------------------------------------ history

  function undoLimit() { return Math.max(5, Math.min(200, Math.floor(UNDO_BYTES / Math.max(1, S.w * S.h)))); }

  function pushUndo() {
    S.undo.push(S.mask.slice());
    if (S.undo.length > undoLimit()) S.undo.shift();
    S.redo = [];
  }
  function markDirty() { S.dirty = true; updateFrameInfo(); }

  function undo() {
    if (!S.undo.length) return;
    S.redo.push(S.mask);
    S.mask = S.undo.pop();
    renderMask();
    markDirty();
  }
  function redo() {
    if (!S.redo.length) return;
    S.undo.push(S.mask);
    S.mask = S.redo.pop();
    renderMask();
    markDirty();
  }
  function replaceMask(m) {
    if (!S.mask) return;
    pushUndo();
    S.mask = m;
    renderMask();
    markDirty();
  }

  // ------------------------------------------------------------------ view

  function applyZoom() {
    if (!S.w) return;
    if (S.fit) {
      const vp = $("viewport");
      S.zoom = Math.max(0.05, Math.min((vp.clientWidth - 4) / S.w, (vp.clientHeight - 4) / S.h));
    }
    const stage = $("stage");
    stage.style.width = `${Math.round(S.w * S.zoom)}px`;
    stage.style.height = `${Math.round(S.h * S.zoom)}px`;
    $("zoom-value").textContent = `${Math.round(S.zoom * 100)}%`;
  }
  function zoomBy(f) { S.fit = false; S.zoom = Math.min(64, Math.max(0.05, S.zoom * f)); applyZoom(); }

  function toImage(e) {
    const r = maskCanvas.getBoundingClientRect();
    return { x: (e.clientX - r.left) * S.w / r.width, y: (e.clientY - r.top) * S.h / r.height };
  }

  function moveCursor(e) {
    const c = $("cursor");
    if (S.tool === "fill" || !S.w) { c.style.display = "none"; return; }
    const r = maskCanvas.getBoundingClientRect();
    const scale = r.width / S.w, d = 2 * S.radius * scale;
    c.style.display = "block";
    c.style.width = c.style.height = `${d}px`;
    c.style.left = `${e.clientX - r.left - d / 2}px`;
    c.style.top = `${e.clientY - r.top - d / 2}px`;
  }

  function setTool(tool) {
    S.tool = tool;
    for (const t of ["brush", "eraser", "fill"]) $(`tool-${t}`).classList.toggle("active", t === tool);
  }
  function setRadius(r) {
    S.radius = Math.max(1, Math.min(100, r));
    $("radius").value = S.radius;
    $("radius-value").textContent = S.radius;
  }

  // ------------------------------------------------------------------ frames

  function updateFrameInfo() {
    if (S.frame === null) return;
    const n = S.state ? S.state.frames : 0;
    const what = S.labelled ? "labelled" : "model's mask";
    $("frame-info").textContent = `frame ${S.frame} of ${n - 1} (${what}${S.dirty ? ", unsaved changes" : ""})`;
  }

  async function loadFrame(i) {
    S.loading = i;
    setStatus(`loading frame ${i}…`);
    const labelled = S.state.labels.includes(i);
    const model = S.state.model.id;
    const [img, pm, mk] = await Promise.all([
      fetchBitmap(`/api/frame/${i}.png`),
      fetchBitmap(`/api/pmap/${i}.png?model=${model}`),
      labelled ? fetchBitmap(`/api/mask/${i}.png?t=${Date.now()}`) : Promise.resolve(null),
    ]);
    if (S.loading !== i) return; // a later navigation won
    S.w = img.width;
    S.h = img.height;
    for (const c of [imageCanvas, maskCanvas]) { c.width = S.w; c.height = S.h; }
    imageCtx.drawImage(img, 0, 0);
    overlay = maskCtx.createImageData(S.w, S.h);
    S.pmap = greyOf(pm);
    S.modelId = model;
    if (mk) {
      const g = greyOf(mk);
      S.mask = new Uint8Array(g.length);
      for (let k = 0; k < g.length; k++) S.mask[k] = g[k] >= 128 ? 1 : 0;
    } else {
      S.mask = thresholded();
    }
    S.frame = i;
    S.labelled = labelled;
    S.undo = [];
    S.redo = [];
    S.dirty = false;
    applyZoom();
    renderMask();
    $("frame-slider").value = i;
    $("frame-number").value = i;
    updateFrameInfo();
    renderLists();
    setStatus(`frame ${i}`);
    postJSON("/api/state", { current: i }).catch(fail);
  }

  function goTo(i) {
    if (!S.state || !Number.isInteger(i)) return;
    i = Math.max(0, Math.min(S.state.frames - 1, i));
    if (i === S.frame) return;
    if (S.dirty && !window.confirm(`Frame ${S.frame} has unsaved changes. Discard them?`)) return;
    loadFrame(i).catch(fail);
  }

  function nextSuggested() {
    const s = (S.state.suggestions || []).find((x) => x.frame !== S.frame);
    if (s) goTo(s.frame);
  }

  async function save() {
    if (S.frame === null || S.saving) return;
    S.saving = true;
    const frame = S.frame;
    try {
      const c = document.createElement("canvas");
      c.width = S.w;
      c.height = S.h;
      const ctx = c.getContext("2d");
      const im = ctx.createImageData(S.w, S.h);
      for (let i = 0; i < S.mask.length; i++) {
        const v = S.mask[i] ? 255 : 0;
        im.data[4 * i] = v; im.data[4 * i + 1] = v; im.data[4 * i + 2] = v; im.data[4 * i + 3] = 255;
      }
      ctx.putImageData(im, 0, 0);
      const blob = await new Promise((resolve) => c.toBlob(resolve, "image/png"));
      const res = await (await api(`/api/label/${frame}`, {
        method: "POST", headers: { "Content-Type": "image/png" }, body: blob,
      })).json();
      S.state.labels = res.labels;
      if (S.frame === frame) { S.dirty = false; S.labelled = true; }
      updateFrameInfo();
      renderLists();
      setStatus(`saved frame ${frame} (${res.face_pixels} face pixels)`);
      document.body.dataset.saves = String(parseInt(document.body.dataset.saves || "0", 10) + 1);
      refreshState().catch(fail);
    } catch (e) {
      fail(e);
    } finally {
      S.saving = false;
    }
  }

  async function deleteLabel() {
    if (S.frame === null || !S.labelled) return;
    if (!window.confirm(`Remove the label of frame ${S.frame}?`)) return;
    const res = await (await api(`/api/label/${S.frame}`, { method: "DELETE" })).json();
    S.state.labels = res.labels;
    S.labelled = false;
    S.dirty = false;
    replaceMask(thresholded());
    S.dirty = false;
    updateFrameInfo();
    renderLists();
    setStatus(`removed the label of frame ${res.deleted}`);
  }

  // ------------------------------------------------------------------ panels

  function chip(frame, cls, title) {
    const b = document.createElement("button");
    b.textContent = frame;
    b.dataset.frame = frame;
    if (cls) b.classList.add(cls);
    if (frame === S.frame) b.classList.add("current");
    if (title) b.title = title;
    b.addEventListener("click", () => goTo(frame));
    return b;
  }

  function renderLists() {
    if (!S.state) return;
    const labels = $("labels");
    labels.replaceChildren(...S.state.labels.map((f) => chip(f)));
    $("label-count").textContent = S.state.labels.length;
    const sugg = (S.state.suggestions || []).filter((s) => !S.state.labels.includes(s.frame));
    $("suggestions").replaceChildren(...sugg.map((s) => chip(s.frame, s.reason === "start" ? "start" : "",
      s.reason === "start" ? "evenly spaced start frame" : `least sure: score ${s.score.toFixed(3)}`)));
    const scan = S.state.scan || {};
    $("scan-info").textContent = scan.state === "running" ? `scoring frames with the current model: ${scan.done}/${scan.total}`
      : scan.state === "failed" ? `scan failed: ${scan.error}` : "";
    renderPreview(sugg);
  }

  function renderPreview(sugg) {
    const frames = sugg.slice(0, 6).map((s) => s.frame);
    const key = `${S.state.model.id}:${frames.join(",")}`;
    if (key === S.previewKey) return;
    S.previewKey = key;
    $("preview").replaceChildren(...frames.map((f) => {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = withToken(`/api/overlay/${f}.png?model=${S.state.model.id}`);
      img.alt = `frame ${f} with the current model's mask`;
      const cap = document.createElement("figcaption");
      cap.textContent = `frame ${f}`;
      fig.append(img, cap);
      fig.addEventListener("click", () => goTo(f));
      return fig;
    }));
  }

  function renderJob(job) {
    const info = $("job-info"), log = $("job-log"), prog = $("train-progress");
    const busy = !!job && (job.state === "running" || job.state === "stopping");
    $("train").disabled = busy;
    $("apply").disabled = busy;
    $("stop").disabled = !busy;
    if (!job) { info.textContent = "no fine-tune yet"; log.textContent = ""; return; }
    if (job.kind === "train") {
      const done = job.epochs_done || 0;
      prog.max = job.epochs;
      prog.value = Math.min(done, job.epochs);
      const loss = job.train_loss != null ? `, loss ${job.train_loss.toFixed(4)}` : "";
      info.textContent = `${job.round}${job.resumed ? " (resumed)" : ""}: epoch ${done}/${job.epochs}${loss} — ${job.state}`;
    } else {
      info.textContent = `applying to the whole source (${job.name}) — ${job.state}`;
    }
    info.dataset.state = job.state;
    log.textContent = (job.log || []).join("\n");
    log.scrollTop = log.scrollHeight;
  }

  function renderApplied() {
    const list = $("applied");
    list.replaceChildren(...(S.state.applied || []).map((a) => {
      const li = document.createElement("li");
      li.append(`${a.name}: masks in apply/${a.name}/masks `);
      for (const f of a.files) {
        const link = document.createElement("a");
        link.href = withToken(`/files/${f}`);
        link.textContent = f.split("/").pop();
        link.target = "_blank";
        li.append(link);
      }
      return li;
    }));
    $("apply-command").textContent = S.state.commands.apply;
  }

  async function refreshState() {
    const st = await getJSON("/api/state");
    const modelChanged = S.state && st.model.id !== S.state.model.id;
    S.state = st;
    $("frame-slider").max = st.frames - 1;
    $("frame-number").max = st.frames - 1;
    $("model-info").textContent = `model: ${st.model.name}`;
    renderLists();
    renderJob(st.job);
    renderApplied();
    if (modelChanged && S.frame !== null && !S.dirty && !S.labelled) {
      // An unedited frame follows the new model.
      const pm = await fetchBitmap(`/api/pmap/${S.frame}.png?model=${st.model.id}`);
      S.pmap = greyOf(pm);
      S.mask = thresholded();
      S.modelId = st.model.id;
      renderMask();
    }
    return st;
  }

  function poll() {
    refreshState().catch(fail).finally(() => {
      const busy = S.state && ((S.state.job && ["running", "stopping"].includes(S.state.job.state))
        || (S.state.scan && S.state.scan.state === "running"));
      setTimeout(poll, busy ? 1000 : 3000);
    });
  }

  // ------------------------------------------------------------------ events

  maskCanvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !S.mask) return;
    e.preventDefault();
    const p = toImage(e);
    if (S.tool === "fill") {
      if (fill(p, e.shiftKey ? 0 : 1)) markDirty();
      return;
    }
    maskCanvas.setPointerCapture(e.pointerId);
    pushUndo();
    S.drawing = true;
    S.last = p;
    paintSegment(p, p, S.tool === "eraser" ? 0 : 1);
    markDirty();
  });
  maskCanvas.addEventListener("pointermove", (e) => {
    moveCursor(e);
    if (!S.drawing) return;
    const value = S.tool === "eraser" ? 0 : 1;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = toImage(ev);
      paintSegment(S.last, p, value);
      S.last = p;
    }
  });
  const endStroke = () => { S.drawing = false; };
  maskCanvas.addEventListener("pointerup", endStroke);
  maskCanvas.addEventListener("pointercancel", endStroke);
  maskCanvas.addEventListener("pointerleave", () => { $("cursor").style.display = "none"; });

  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("tool-fill").addEventListener("click", () => setTool("fill"));
  $("radius").addEventListener("input", (e) => setRadius(parseInt(e.target.value, 10)));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => replaceMask(new Uint8Array(S.w * S.h)));
  $("reset").addEventListener("click", () => replaceMask(thresholded()));
  $("threshold").addEventListener("input", (e) => {
    S.threshold = parseInt(e.target.value, 10) / 100;
    $("threshold-value").textContent = S.threshold.toFixed(2);
    if (!S.mask) return;
    if (!S.thresholdDrag) { pushUndo(); S.thresholdDrag = true; }
    S.mask = thresholded();
    renderMask();
    markDirty();
  });
  $("threshold").addEventListener("change", () => { S.thresholdDrag = false; });
  $("opacity").addEventListener("input", (e) => {
    S.opacity = parseInt(e.target.value, 10) / 100;
    $("opacity-value").textContent = `${e.target.value}%`;
    renderMask();
  });
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("zoom-fit").addEventListener("click", () => { S.fit = true; applyZoom(); });
  window.addEventListener("resize", () => { if (S.fit) applyZoom(); });

  $("prev").addEventListener("click", () => goTo(S.frame - 1));
  $("next").addEventListener("click", () => goTo(S.frame + 1));
  $("frame-slider").addEventListener("change", (e) => goTo(parseInt(e.target.value, 10)));
  $("go").addEventListener("click", () => goTo(parseInt($("frame-number").value, 10)));
  $("frame-number").addEventListener("keydown", (e) => {
    if (e.key === "Enter") goTo(parseInt(e.target.value, 10));
  });
  $("next-suggested").addEventListener("click", nextSuggested);
  $("save").addEventListener("click", save);
  $("delete").addEventListener("click", () => deleteLabel().catch(fail));

  $("train").addEventListener("click", async () => {
    try {
      const epochs = parseInt($("epochs").value, 10);
      const job = await postJSON("/api/train", { epochs, from: $("train-from").value });
      renderJob(job);
      setStatus(job.resumed ? `resumed ${job.round}` : `started ${job.round}`);
      refreshState().catch(fail);
    } catch (e) { fail(e); }
  });
  $("stop").addEventListener("click", async () => {
    try { renderJob(await postJSON("/api/stop")); } catch (e) { fail(e); }
  });
  $("apply").addEventListener("click", async () => {
    try { renderJob(await postJSON("/api/apply")); setStatus("applying the current model to the whole source"); } catch (e) { fail(e); }
  });

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const tag = (t && t.tagName || "").toLowerCase();
    // A slider keeps the keys that move it; every other key is still a shortcut.
    const slider = tag === "input" && t.type === "range";
    if (slider && ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"].includes(e.key)) return;
    if ((tag === "input" && !slider) || tag === "select" || tag === "textarea") return;
    const k = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (k === "z" || k === "Z")) { e.preventDefault(); if (e.shiftKey) redo(); else undo(); return; }
    if (ctrl && (k === "y" || k === "Y")) { e.preventDefault(); redo(); return; }
    if (ctrl && (k === "s" || k === "S")) { e.preventDefault(); save(); return; }
    if (ctrl || e.altKey) return;
    const actions = {
      b: () => setTool("brush"), e: () => setTool("eraser"), f: () => setTool("fill"),
      "[": () => setRadius(S.radius - (S.radius > 10 ? 2 : 1)), "]": () => setRadius(S.radius + (S.radius >= 10 ? 2 : 1)),
      s: save, ArrowLeft: () => goTo(S.frame - 1), a: () => goTo(S.frame - 1),
      ArrowRight: () => goTo(S.frame + 1), d: () => goTo(S.frame + 1), n: nextSuggested,
      c: () => replaceMask(new Uint8Array(S.w * S.h)), r: () => replaceMask(thresholded()),
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8), "0": () => { S.fit = true; applyZoom(); },
      o: () => {
        if (S.opacity > 0) { S.savedOpacity = S.opacity; S.opacity = 0; } else { S.opacity = S.savedOpacity || 0.5; }
        $("opacity").value = Math.round(S.opacity * 100);
        $("opacity-value").textContent = `${Math.round(S.opacity * 100)}%`;
        renderMask();
      },
    };
    const act = actions[k] || (k.length === 1 ? actions[k.toLowerCase()] : undefined);
    if (act) { e.preventDefault(); act(); }
  });

  window.addEventListener("beforeunload", (e) => {
    if (S.dirty) { e.preventDefault(); e.returnValue = ""; }
  });

  // ------------------------------------------------------------------ start

  (async () => {
    try {
      const st = await refreshState();
      $("epochs").value = st.train.epochs;
      $("train-from").value = st.train.has_best ? "best" : "start";
      S.threshold = st.threshold;
      $("threshold").value = Math.round(st.threshold * 100);
      $("threshold-value").textContent = st.threshold.toFixed(2);
      await loadFrame(st.current); // where the page was: the page resumes there
      document.body.dataset.ready = "true";
    } catch (e) {
      fail(e);
    }
    setTimeout(poll, 1000);
  })();
})();
