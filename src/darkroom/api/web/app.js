// darkroom playground: a framework-free client of the request-queue API (docs/api.md).
//
// Everything the page shows comes from the API with the user's key: the models and their
// parameters (rendered generically from each model record), the live events of a request
// (docs/events.md, read with fetch() because EventSource cannot send an Authorization
// header), and the paginated list of the key's requests. No request goes to any other host.

const API = new URL("api/v1/ie/requestqueue/apikey/", document.baseURI);
const KEY_STORAGE = "darkroom.apiKey";
const PAGE_SIZE = 8;
const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
// Offered when a model record lists no aspect-ratio options; any W:H from 3:7 to 7:3 is accepted.
const ASPECT_CHOICES = ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "7:3", "3:7"];
const IMAGE_PARAM = /^input_image(_\d+)?$/;
// Where the well-known FLUX Kontext fields go; any other parameter is rendered after them.
const ORDER = ["prompt", "input_image", "input_image_2", "input_image_3", "input_image_4", "aspect_ratio",
  "seed", "safety_tolerance", "output_format", "prompt_upsampling"];
const LABELS = { output_format: "Format", aspect_ratio: "Aspect ratio", prompt_upsampling: "Prompt upsampling" };
const TERMINAL = new Set(["success", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);

// -- tiny DOM helper: never innerHTML with data ------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function humanize(name) {
  if (LABELS[name]) return LABELS[name];
  const s = name.replace(/_(\d+)$/, " $1").replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");

// -- output size: darkroom.imaging.size_for_aspect, in JS -------------------------------------

export function sizeForAspect(w, h, area = 1024 * 1024, multiple = 16) {
  const ratio = w / h;
  const exactW = Math.sqrt(area * ratio);
  const exactH = Math.sqrt(area / ratio);
  let best = null;
  for (const dw of [-2, -1, 0, 1, 2]) {
    for (const dh of [-2, -1, 0, 1, 2]) {
      // Python's round() rounds halves to even; so does this.
      const cw = (roundHalfEven(exactW / multiple) + dw) * multiple;
      const ch = (roundHalfEven(exactH / multiple) + dh) * multiple;
      if (cw <= 0 || ch <= 0 || Math.abs(cw * ch - area) > 0.1 * area) continue;
      const score = Math.abs(Math.log((cw / ch) / ratio)) + 0.1 * Math.abs(Math.log((cw * ch) / area));
      if (best === null || score < best[0]) best = [score, cw, ch];
    }
  }
  return best ? [best[1], best[2]] : null;
}

function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

export function parseAspect(value) {
  const m = /^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$/.exec(value || "");
  if (!m) return null;
  const w = Number(m[1]);
  const hh = Number(m[2]);
  if (!w || !hh) return null;
  const r = w / hh;
  if (r < 3 / 7 - 1e-9 || r > 7 / 3 + 1e-9) return null;
  return [w, hh];
}

// -- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.field = err.field || null;
    this.retryAfter = retryAfter;
  }
}

const state = {
  key: null,
  models: [],
  model: null, // the selected model record
  controls: new Map(), // parameter name -> {param, get, set, reset, element, dirty}
  images: new Map(), // input image field -> data URL (or URL)
  current: null, // the followed request: {id, status, final}
  follow: null, // AbortController of the followed stream
  lastSeed: null,
  offset: 0,
  total: 0,
  detail: null, // the status object in the dialog
};

async function api(method, path, body) {
  if (!state.key) throw new ApiError(401, { error: { code: "unauthorized", message: "no API key" } });
  const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(new URL(path, API), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data, resp.headers.get("Retry-After"));
  return data;
}

// Server-Sent Events over fetch: yields {event, data, id}; `onRetry` gets a `retry:` value.
export async function* readEvents(body, onRetry) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { event: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    for (;;) {
      const m = /\r\n|\n|\r/.exec(buf);
      if (!m) break;
      // A lone "\r" at the very end may be the first half of "\r\n": wait for more.
      if (m[0] === "\r" && m.index === buf.length - 1) break;
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (ev.data.length) {
          yield { event: ev.event || "message", data: ev.data.join("\n"), id: ev.id };
        }
        ev = { event: "", data: [], id: ev.id };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") ev.event = val;
      else if (field === "data") ev.data.push(val);
      else if (field === "id") ev.id = val;
      else if (field === "retry" && /^\d+$/.test(val) && onRetry) onRetry(Number(val));
    }
  }
}

// -- key -------------------------------------------------------------------------------------

function showKeyPanel(message) {
  $("key-panel").hidden = false;
  $("app").hidden = true;
  $("gallery").hidden = true;
  $("key-state").hidden = true;
  $("key-error").textContent = message || "";
  $("key-input").focus();
}

let keyAttempt = 0;

async function useKey(key) {
  const attempt = ++keyAttempt;
  state.key = key;
  try {
    const list = await api("GET", "models");
    if (attempt !== keyAttempt) return false; // another key (or a forget) came since
    state.models = list.models || [];
  } catch (err) {
    if (attempt !== keyAttempt) return false;
    state.key = null;
    const msg = err.status === 401 ? "The server refused this key (unauthorized). Check it and try again."
      : `Could not reach the API: ${err.message}`;
    showKeyPanel(msg);
    return false;
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("key-panel").hidden = true;
  $("app").hidden = false;
  $("gallery").hidden = false;
  $("key-state").hidden = false;
  $("key-label").textContent = `Key ${key.slice(0, 8)}…`;
  fillModels();
  loadGallery(0);
  return true;
}

function forgetKey() {
  keyAttempt += 1;
  localStorage.removeItem(KEY_STORAGE);
  if (state.follow) state.follow.abort();
  state.key = null;
  state.current = null;
  $("key-input").value = "";
  $("gallery-list").replaceChildren();
  resetResult("Nothing yet: write a prompt and press Generate.");
  showKeyPanel("Key forgotten: this browser no longer stores it.");
}

// -- the form, rendered from the model record ---------------------------------------------------

function fillModels() {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((m) =>
    h("option", { value: m.model, text: `${m.model}${m.model_type === "image-editing" ? " (editing)" : ""}` })));
  if (previous && state.models.some((m) => m.model === previous)) select.value = previous;
  selectModel(select.value);
}

function isEditing(model) {
  return !!model && model.parameters.some((p) => IMAGE_PARAM.test(p.name));
}

function selectModel(id) {
  const model = state.models.find((m) => m.model === id) || state.models[0] || null;
  state.model = model;
  const keepPrompt = state.controls.get("prompt")?.get();
  state.controls.clear();
  state.images.clear();
  clearErrors();
  const fields = $("fields");
  fields.replaceChildren();
  if (!model) {
    $("model-help").textContent = "This server has no models.";
    return;
  }
  $("model").value = model.model;
  $("model-help").textContent = [model.brief_description, model.model_type].filter(Boolean).join(" · ");
  const params = [...model.parameters].sort((a, b) => rank(a.name) - rank(b.name));
  const extra = h("div", { class: "grid-fields" });
  const main = h("div", { class: "grid-fields" });
  for (const p of params) {
    const control = renderParam(p);
    state.controls.set(p.name, control);
    if (["prompt", "aspect_ratio"].includes(p.name) || IMAGE_PARAM.test(p.name)) fields.append(control.element);
    else if (ORDER.includes(p.name)) main.append(control.element);
    else extra.append(control.element);
  }
  const images = params.filter((p) => IMAGE_PARAM.test(p.name));
  if (images.length) {
    // One drop zone per input image field, grouped after the prompt.
    const group = h("fieldset", { class: "images" }, h("legend", { text: "Input images" }),
      h("p", { class: "help", text: "Drop images here or pick files: the first is the image to edit, the others extra references." }));
    for (const p of images) group.append(state.controls.get(p.name).element);
    const promptEl = state.controls.get("prompt")?.element;
    if (promptEl) promptEl.after(group);
    else fields.prepend(group);
  }
  fields.append(h("fieldset", { class: "settings" }, h("legend", { text: "Settings" }), main));
  if (extra.childElementCount) {
    fields.append(h("fieldset", { class: "settings" }, h("legend", { text: "Model parameters" }), extra));
  }
  if (keepPrompt) state.controls.get("prompt")?.set(keepPrompt, false);
  updateEditDefaults();
}

function rank(name) {
  const i = ORDER.indexOf(name);
  return i < 0 ? ORDER.length : i;
}

function describe(p) {
  const c = p.constraints || {};
  const bits = [p.description];
  if (c.minimum !== undefined && c.maximum !== undefined) bits.push(`${fmtNum(c.minimum)} to ${fmtNum(c.maximum)}`);
  else if (c.minimum !== undefined) bits.push(`at least ${fmtNum(c.minimum)}`);
  else if (c.maximum !== undefined) bits.push(`at most ${fmtNum(c.maximum)}`);
  if (p.default !== null && p.default !== undefined && p.name !== "prompt") {
    bits.push(`default ${fmtValue(p.default)}` + (p.edit_default !== undefined ? ` (${fmtValue(p.edit_default)} when editing)` : ""));
  }
  return bits.filter(Boolean).join(" · ");
}

const fmtNum = (n) => (Number.isInteger(n) && Math.abs(n) >= 10000 ? fmtInt(n) : String(n));
const fmtValue = (v) => (typeof v === "boolean" ? (v ? "on" : "off") : String(v));

// A field: label, control, help text (the record's description and range), error line.
function fieldShell(p, control, { extra = null, describeText = null } = {}) {
  const id = `f-${p.name}`;
  const help = h("p", { class: "help", id: `${id}-help`, text: describeText ?? describe(p) });
  const error = h("p", { class: "error", id: `${id}-error`, hidden: true });
  control.id = control.id || id;
  control.setAttribute("aria-describedby", `${id}-help ${id}-error`);
  const label = h("label", { for: control.id, text: humanize(p.name) });
  if (p.required) control.setAttribute("aria-required", "true");
  const el = h("div", { class: `field field-${p.name}`, "data-param": p.name }, label,
    extra ? h("div", { class: "row" }, control, extra) : control, help, error);
  return el;
}

function renderParam(p) {
  if (p.name === "prompt") return renderPrompt(p);
  if (IMAGE_PARAM.test(p.name)) return renderImage(p);
  if (p.name === "aspect_ratio" || (p.constraints || {}).range) return renderAspect(p);
  if (p.name === "seed") return renderSeed(p);
  if (p.name === "safety_tolerance") return renderRange(p);
  return renderGeneric(p);
}

function control(p, element, get, set, focusEl) {
  const c = { param: p, element, get, set, dirty: false, focusEl };
  const mark = () => { c.dirty = true; clearFieldError(p.name); };
  focusEl.addEventListener("input", mark);
  focusEl.addEventListener("change", mark);
  return c;
}

function renderPrompt(p) {
  const max = (p.constraints || {}).max_length || 2000;
  const area = h("textarea", { name: "prompt", rows: 4, required: true, spellcheck: "true",
    placeholder: "A lighthouse on a cliff at dusk, oil painting" });
  const count = h("span", { class: "count", id: "prompt-count", "aria-live": "polite" });
  const update = () => {
    const n = [...area.value].length; // code points, as the server counts
    count.textContent = `${fmtInt(n)} / ${fmtInt(max)}`;
    count.classList.toggle("over", n > max);
  };
  area.addEventListener("input", update);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("gen-form").requestSubmit(); }
  });
  const el = fieldShell(p, area, { describeText: p.description });
  area.after(count);
  area.setAttribute("aria-describedby", `f-prompt-help prompt-count f-prompt-error`);
  update();
  const c = control(p, el, () => area.value, (v) => { area.value = v ?? ""; update(); }, area);
  c.dirty = true; // always sent
  return c;
}

function renderAspect(p) {
  const opts = (p.constraints || {}).options || ASPECT_CHOICES;
  const select = h("select", { name: "aspect_ratio" },
    ...opts.map((o) => h("option", { value: o, text: o })), h("option", { value: "custom", text: "Custom…" }));
  const custom = h("input", { type: "text", id: "f-aspect_ratio-custom", placeholder: "W:H, e.g. 5:4",
    "aria-label": "Custom aspect ratio (W:H)", hidden: true, inputmode: "numeric", size: 8 });
  const size = h("output", { id: "aspect-size", class: "size", for: "f-aspect_ratio", "aria-live": "polite" });
  const shape = h("span", { class: "shape", "aria-hidden": "true" });
  const value = () => (select.value === "custom" ? custom.value.trim() : select.value);
  const update = () => {
    custom.hidden = select.value !== "custom";
    const r = parseAspect(value());
    if (!r) { size.textContent = "not a ratio from 3:7 to 7:3"; return; }
    const [w, hh] = sizeForAspect(r[0], r[1]);
    size.textContent = `${fmtInt(w)} × ${fmtInt(hh)} px`;
    shape.style.width = `${Math.round(28 * Math.sqrt(w / hh))}px`;
    shape.style.height = `${Math.round(28 * Math.sqrt(hh / w))}px`;
  };
  select.addEventListener("change", () => { update(); if (select.value === "custom") custom.focus(); });
  custom.addEventListener("input", update);
  const set = (v) => {
    v = v || "1:1";
    if (opts.includes(v)) select.value = v;
    else { select.value = "custom"; custom.value = v; }
    update();
  };
  const el = fieldShell(p, select, { extra: h("span", { class: "aspect-extra" }, custom, shape, size) });
  set(p.default);
  const c = control(p, el, value, set, select);
  custom.addEventListener("input", () => { c.dirty = true; clearFieldError(p.name); });
  return c;
}

function renderSeed(p) {
  const c0 = p.constraints || {};
  const input = h("input", { type: "number", name: "seed", min: c0.minimum, max: c0.maximum, step: 1,
    inputmode: "numeric", value: p.default ?? 0 });
  const dice = h("button", { type: "button", class: "icon", "aria-label": "Random seed", title: "Random seed" },
    diceIcon());
  const reuse = h("button", { type: "button", id: "reuse-seed", disabled: true, text: "Reuse seed",
    title: "The seed of the last image" });
  const c = control(p, null, () => (input.value === "" ? undefined : Number(input.value)),
    (v) => { input.value = v ?? ""; }, input);
  dice.addEventListener("click", () => {
    const max = c0.maximum || 2147483647;
    const buf = new Uint32Array(1);
    crypto.getRandomValues(buf);
    input.value = String(1 + (buf[0] % max));
    c.dirty = true;
    clearFieldError("seed");
  });
  reuse.addEventListener("click", () => {
    if (state.lastSeed === null) return;
    input.value = String(state.lastSeed);
    c.dirty = true;
    clearFieldError("seed");
  });
  c.element = fieldShell(p, input, { extra: h("span", { class: "buttons" }, dice, reuse),
    describeText: `${p.description} ${fmtNum(c0.minimum ?? 0)} to ${fmtNum(c0.maximum ?? 2147483647)}.` });
  updateReuse(reuse);
  return c;
}

function diceIcon() {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "20");
  svg.setAttribute("height", "20");
  svg.setAttribute("aria-hidden", "true");
  const box = document.createElementNS(NS, "rect");
  for (const [k, v] of Object.entries({ x: 3, y: 3, width: 18, height: 18, rx: 4, fill: "none", stroke: "currentColor",
    "stroke-width": 2 })) box.setAttribute(k, v);
  svg.append(box);
  for (const [cx, cy] of [[8, 8], [16, 8], [12, 12], [8, 16], [16, 16]]) {
    const dot = document.createElementNS(NS, "circle");
    dot.setAttribute("cx", cx);
    dot.setAttribute("cy", cy);
    dot.setAttribute("r", 1.6);
    dot.setAttribute("fill", "currentColor");
    svg.append(dot);
  }
  return svg;
}

function updateReuse(button = $("reuse-seed")) {
  if (!button) return;
  button.disabled = state.lastSeed === null;
  button.textContent = state.lastSeed === null ? "Reuse seed" : `Reuse seed ${state.lastSeed}`;
}

function renderRange(p) {
  const c0 = p.constraints || {};
  const input = h("input", { type: "range", name: p.name, min: c0.minimum ?? 0, max: c0.maximum ?? 6, step: 1,
    value: p.default ?? 0 });
  const out = h("output", { class: "range-value", for: `f-${p.name}` });
  const words = { 0: "strictest", [c0.maximum ?? 6]: "most permissive" };
  const update = () => {
    out.textContent = `${input.value}${words[input.value] ? ` (${words[input.value]})` : ""}`;
    input.setAttribute("aria-valuetext", out.textContent);
  };
  input.addEventListener("input", update);
  update();
  const c = control(p, null, () => Number(input.value), (v) => { input.value = v ?? p.default; update(); }, input);
  c.element = fieldShell(p, input, { extra: out });
  return c;
}

function renderGeneric(p) {
  const c0 = p.constraints || {};
  let input;
  let get;
  let set;
  if (c0.options) {
    input = h("select", { name: p.name }, ...c0.options.map((o) => h("option", { value: String(o), text: String(o) })));
    get = () => {
      const v = input.value;
      const match = c0.options.find((o) => String(o) === v);
      return match === undefined ? v : match;
    };
    set = (v) => { input.value = String(v ?? p.default ?? c0.options[0]); };
  } else if (p.type === "boolean") {
    input = h("input", { type: "checkbox", name: p.name });
    get = () => input.checked;
    set = (v) => { input.checked = !!v; };
    const el = h("div", { class: `field check field-${p.name}`, "data-param": p.name });
    const c = control(p, el, get, set, input);
    set(p.default);
    input.id = `f-${p.name}`;
    input.setAttribute("aria-describedby", `f-${p.name}-help f-${p.name}-error`);
    el.append(h("div", { class: "row" }, input, h("label", { for: input.id, text: humanize(p.name) })),
      h("p", { class: "help", id: `f-${p.name}-help`, text: describe(p) }),
      h("p", { class: "error", id: `f-${p.name}-error`, hidden: true }));
    return c;
  } else if (p.type === "integer" || p.type === "float" || p.type === "number") {
    input = h("input", { type: "number", name: p.name, min: c0.minimum, max: c0.maximum,
      step: p.type === "integer" ? 1 : "any", inputmode: p.type === "integer" ? "numeric" : "decimal" });
    get = () => (input.value === "" ? undefined : Number(input.value));
    set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
  } else if ((c0.max_length || 0) > 200) {
    input = h("textarea", { name: p.name, rows: 3 });
    get = () => input.value;
    set = (v) => { input.value = v ?? ""; };
  } else {
    input = h("input", { type: "text", name: p.name, maxlength: c0.max_length });
    get = () => (input.value === "" && c0.nullable ? null : input.value);
    set = (v) => { input.value = v ?? ""; };
  }
  const c = control(p, null, get, set, input);
  set(p.default);
  c.element = fieldShell(p, input);
  return c;
}

function renderImage(p) {
  const index = p.name === "input_image" ? 1 : Number(p.name.split("_").pop());
  const file = h("input", { type: "file", accept: "image/*", name: p.name });
  const thumb = h("img", { class: "thumb", alt: "", hidden: true });
  const remove = h("button", { type: "button", hidden: true, text: "Remove",
    "aria-label": `Remove ${humanize(p.name).toLowerCase()}` });
  const zone = h("div", { class: "drop" }, thumb,
    h("span", { class: "drop-text", text: index === 1 ? "Drop the image to edit" : `Drop reference ${index}` }),
    file, remove);
  const c = {
    param: p, dirty: true, focusEl: file,
    get: () => state.images.get(p.name) || undefined,
    set: (v, label) => {
      if (v) {
        state.images.set(p.name, v);
        thumb.src = v;
        thumb.alt = `${humanize(p.name)}: ${label || "chosen image"}`;
        thumb.hidden = false;
        remove.hidden = false;
        zone.classList.add("filled");
      } else {
        state.images.delete(p.name);
        thumb.removeAttribute("src");
        thumb.hidden = true;
        remove.hidden = true;
        file.value = "";
        zone.classList.remove("filled");
      }
      clearFieldError(p.name);
      updateEditDefaults();
    },
  };
  const take = async (f) => {
    if (!f) return;
    if (!f.type.startsWith("image/")) { showFieldError(p.name, `${f.name} is not an image`); return; }
    if (f.size > MAX_IMAGE_BYTES) { showFieldError(p.name, `${f.name} is larger than 20 MB`); return; }
    c.set(await readAsDataURL(f), f.name);
  };
  file.addEventListener("change", () => take(file.files[0]));
  remove.addEventListener("click", () => { c.set(null); file.focus(); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  c.element = fieldShell(p, file, { describeText: p.description });
  c.element.classList.add("image-field");
  // the file input lives inside the drop zone (fieldShell moved it out)
  zone.insertBefore(file, remove);
  c.element.querySelector("label").after(zone);
  return c;
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// Parameters with another default for edits (the record's edit_default) follow the images,
// unless the user set them.
function updateEditDefaults() {
  const editing = state.images.size > 0;
  for (const c of state.controls.values()) {
    const p = c.param;
    if (p.edit_default === undefined || c.dirty) continue;
    c.set(editing ? p.edit_default : p.default);
    c.dirty = false;
  }
}

function collectPayload() {
  const payload = {};
  for (const [name, c] of state.controls) {
    if (!c.dirty && !IMAGE_PARAM.test(name)) continue;
    const v = c.get();
    if (v === undefined) continue;
    payload[name] = v;
  }
  return payload;
}

function fillForm(modelId, payload) {
  $("model").value = modelId;
  selectModel(modelId);
  for (const [name, value] of Object.entries(payload || {})) {
    const c = state.controls.get(name);
    if (!c || IMAGE_PARAM.test(name)) continue;
    c.set(value);
    c.dirty = true;
  }
}

// -- errors next to their fields ------------------------------------------------------------------

function clearFieldError(name) {
  const err = $(name === "model" ? "model-error" : `f-${name}-error`);
  if (err) { err.textContent = ""; err.hidden = true; }
  const c = state.controls.get(name);
  const ctl = name === "model" ? $("model") : c?.focusEl;
  if (ctl) ctl.removeAttribute("aria-invalid");
}

function clearErrors() {
  for (const el of document.querySelectorAll("#gen-form .error")) { el.textContent = ""; el.hidden = true; }
  for (const el of document.querySelectorAll("#gen-form [aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showFieldError(name, message) {
  const err = $(name === "model" ? "model-error" : `f-${name}-error`);
  const ctl = name === "model" ? $("model") : state.controls.get(name)?.focusEl;
  if (!err || !ctl) return false;
  err.textContent = message;
  err.hidden = false;
  ctl.setAttribute("aria-invalid", "true");
  return ctl;
}

function showApiError(err) {
  if (err.status === 401) { showKeyPanel("The server refused the key (unauthorized): enter it again."); return; }
  const name = err.field ? err.field.replace(/^payload\./, "") : null;
  // The message names the field already ("payload.seed: must be ..."): show the rest beside it.
  const text = err.message.replace(/^payload\.[\w]+:\s*/, "");
  const ctl = name && showFieldError(name, text);
  const summary = $("form-error");
  if (ctl) {
    summary.textContent = `Fix ${humanize(name).toLowerCase()}: ${text}`;
    ctl.focus();
  } else {
    let msg = `${err.message} (${err.code})`;
    if (err.status === 429 && err.retryAfter) msg += `: try again in ${err.retryAfter} s`;
    summary.textContent = msg;
  }
  summary.hidden = false;
}

// -- submit and follow ----------------------------------------------------------------------------

async function submit(e) {
  e.preventDefault();
  if (!state.model) return;
  clearErrors();
  const button = $("submit");
  button.disabled = true;
  try {
    const submitted = await api("POST", "requests", { model: state.model.model, payload: collectPayload() });
    follow(submitted.request_id, submitted);
    loadGallery(0);
  } catch (err) {
    if (err instanceof ApiError) showApiError(err);
    else showApiError(new ApiError(0, { error: { code: "network", message: String(err.message || err) } }));
  } finally {
    button.disabled = false;
  }
}

function resetResult(text) {
  $("status").textContent = text;
  $("status").dataset.status = "";
  const bar = $("progress");
  bar.max = 1;
  bar.value = 0;
  $("progress-text").textContent = "";
  $("figure").hidden = true;
  $("image").removeAttribute("src");
  $("meta").hidden = true;
  $("meta").replaceChildren();
  $("download").hidden = true;
  $("cancel").hidden = true;
  $("edit-result").hidden = true;
}

async function follow(id, first) {
  if (state.follow) state.follow.abort();
  const ctrl = new AbortController();
  state.follow = ctrl;
  state.current = { id, status: first?.status || "queued", final: null };
  resetResult(`Request ${id.slice(0, 8)}: submitted`);
  $("current").dataset.requestId = id;
  $("cancel").hidden = false;
  let lastId = null;
  let retry = 2000;
  while (!ctrl.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const resp = await fetch(new URL(`requests/${id}/events`, API), { headers, signal: ctrl.signal, cache: "no-store" });
      if (!resp.ok) {
        const data = await resp.json().catch(() => null);
        const err = new ApiError(resp.status, data);
        if (resp.status === 401) { showApiError(err); return; }
        if (resp.status < 500) { $("status").textContent = `${err.message} (${err.code})`; return; }
        throw err;
      }
      for await (const ev of readEvents(resp.body, (ms) => { retry = ms; })) {
        if (ctrl.signal.aborted) return;
        if (ev.id) lastId = ev.id;
        let data;
        try { data = JSON.parse(ev.data); } catch { continue; }
        onEvent(ev.event, data);
        if (ev.event === "done") return;
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
    }
    // The stream ended without `done` (its time limit, a dropped connection): reconnect.
    await new Promise((r) => setTimeout(r, retry));
  }
}

function onEvent(name, data) {
  const cur = state.current;
  if (!cur) return;
  const status = $("status");
  const bar = $("progress");
  const count = $("progress-text");
  if (name === "status") {
    cur.status = data.status;
    status.dataset.status = data.status;
    if (data.status === "queued") {
      const pos = data.queue_position;
      status.textContent = pos === null || pos === undefined ? "Queued"
        : pos === 0 ? "Queued: next in line" : `Queued: ${fmtInt(pos)} ahead`;
      bar.max = 1;
      bar.value = 0;
      count.textContent = pos ? `#${pos + 1} in queue` : "";
    } else if (data.status === "processing") {
      status.textContent = "Generating…";
      if (data.progress) setProgress(data.progress);
      else { bar.removeAttribute("value"); count.textContent = "starting"; }
    } else if (TERMINAL.has(data.status)) {
      if (data.status === "success" && data.progress) setProgress({ step: data.progress.total, total: data.progress.total });
    }
    $("cancel").hidden = TERMINAL.has(data.status);
  } else if (name === "progress") {
    setProgress(data);
  } else if (name === "preview") {
    $("figure").hidden = false;
    $("image").src = data.url;
    $("image").alt = `Preview at step ${data.step}`;
    $("caption").textContent = `Preview at step ${data.step}`;
  } else if (name === "done") {
    cur.final = data;
    cur.status = data.status;
    showFinal(data);
    loadGallery(state.offset);
  }
}

function setProgress({ step, total }) {
  const bar = $("progress");
  bar.max = total || 1;
  bar.value = step || 0;
  $("progress-text").textContent = `step ${step} / ${total}`;
}

function showFinal(s) {
  const status = $("status");
  status.dataset.status = s.status;
  $("cancel").hidden = true;
  const outcome = s.outcome || {};
  if (s.status === "success") {
    const url = outcome.media_urls?.[0]?.url;
    const total = s.progress?.total;
    if (total) setProgress({ step: total, total });
    else { $("progress").max = 1; $("progress").value = 1; }
    status.textContent = "Done";
    state.lastSeed = outcome.seed ?? null;
    updateReuse();
    $("figure").hidden = false;
    $("image").src = url;
    $("image").alt = outcome.prompt || s.payload?.prompt || "generated image";
    $("caption").textContent = outcome.prompt && outcome.prompt !== s.payload?.prompt ? `Prompt as run: ${outcome.prompt}` : "";
    fillMeta($("meta"), s);
    $("meta").hidden = false;
    setDownload($("download"), s);
    $("edit-result").hidden = !editModel();
  } else {
    const err = outcome.error || {};
    status.textContent = s.status === "cancelled" ? "Cancelled" : `Failed: ${err.message || "unknown error"} (${err.code || s.status})`;
    $("figure").hidden = true;
  }
}

function fillMeta(dl, s) {
  const o = s.outcome || {};
  const rows = [];
  if (o.seed !== undefined && o.seed !== null) rows.push(["Seed", String(o.seed)]);
  if (o.width) rows.push(["Size", `${fmtInt(o.width)} × ${fmtInt(o.height)} px`]);
  if (o.output_format) rows.push(["Format", o.output_format.toUpperCase()]);
  for (const [k, v] of Object.entries(o.timings || {})) {
    rows.push([humanize(k.replace(/_ms$/, "")) + " time", `${fmtInt(Math.round(v))} ms`]);
  }
  if (o.error) rows.push(["Error", `${o.error.message} (${o.error.code})`]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));
}

function setDownload(a, s) {
  const o = s.outcome || {};
  const url = o.media_urls?.[0]?.url;
  a.hidden = !url;
  if (!url) { a.removeAttribute("href"); return; }
  a.href = url;
  a.download = `darkroom-${s.request_id.slice(0, 8)}.${o.output_format === "png" ? "png" : "jpg"}`;
}

async function cancel(id) {
  try {
    return await api("POST", `requests/${id}/cancel`);
  } catch (err) {
    if (err.status !== 409) showApiError(err); // 409: it had already ended
    return null;
  }
}

// -- edit a result ----------------------------------------------------------------------------------

function editModel() {
  if (isEditing(state.model)) return state.model;
  return state.models.find(isEditing) || null;
}

async function useAsInput(url, label) {
  const model = editModel();
  if (!model || !url) return;
  let value = url;
  try {
    const resp = await fetch(url, { cache: "no-store" });
    if (resp.ok) value = await readAsDataURL(await resp.blob());
  } catch {
    // Not readable from here (another origin without CORS): the server fetches the URL itself.
  }
  if (state.model !== model) { $("model").value = model.model; selectModel(model.model); }
  state.controls.get("input_image").set(value, label);
  const prompt = $("f-prompt");
  prompt.focus();
  prompt.scrollIntoView({ block: "center" });
}

// -- gallery ------------------------------------------------------------------------------------------

let galleryLoad = 0;

async function loadGallery(offset) {
  if (!state.key) return;
  const mine = ++galleryLoad;
  let page;
  try {
    page = await api("GET", `requests?limit=${PAGE_SIZE}&offset=${Math.max(0, offset)}`);
  } catch (err) {
    if (err.status === 401) showApiError(err);
    return;
  }
  if (mine !== galleryLoad) return; // a newer load is on its way
  state.offset = page.offset;
  state.total = page.total;
  const list = $("gallery-list");
  list.replaceChildren(...page.requests.map(card));
  if (!page.requests.length) list.append(h("li", { class: "empty", text: "No requests yet." }));
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.requests.length;
  $("page-info").textContent = `${fmtInt(first)}–${fmtInt(last)} of ${fmtInt(page.total)}`;
  $("newer").disabled = page.offset <= 0;
  $("older").disabled = last >= page.total;
  if (page.requests.some((r) => !TERMINAL.has(r.status))) scheduleGalleryRefresh();
}

let galleryTimer = null;
function scheduleGalleryRefresh() {
  // Requests still queued or running: look again in a while, to show them finished.
  if (galleryTimer) return;
  galleryTimer = setTimeout(() => { galleryTimer = null; if (!document.hidden) loadGallery(state.offset); }, 3000);
}

function thumbUrl(r) {
  if (r.status === "success") return r.outcome?.media_urls?.[0]?.url;
  return r.preview?.url;
}

function card(r) {
  const url = thumbUrl(r);
  const prompt = r.payload?.prompt || "";
  const when = new Date(r.created_at * 1000).toLocaleString();
  const button = h("button", { type: "button", class: "card", "data-request-id": r.request_id,
    "aria-label": `${r.status}: ${prompt.slice(0, 80)} (${r.model}, ${when})`, onclick: () => openDetail(r.request_id) },
  url ? h("img", { src: url, alt: "", loading: "lazy", class: "card-img" })
    : h("span", { class: "card-img placeholder", "aria-hidden": "true", text: TERMINAL.has(r.status) ? "no image" : "…" }),
  h("span", { class: `badge status-${r.status}`, text: r.status }),
  h("span", { class: "card-prompt", text: prompt }),
  h("span", { class: "card-model", text: `${r.model} · ${when}` }));
  return h("li", {}, button);
}

async function openDetail(id) {
  let s;
  try { s = await api("GET", `requests/${id}`); } catch (err) { showApiError(err); return; }
  state.detail = s;
  const dialog = $("detail");
  $("detail-title").textContent = `Request ${s.request_id.slice(0, 8)}`;
  const err = s.outcome?.error;
  const where = s.status === "queued" && s.queue_position !== null && s.queue_position !== undefined
    ? ` (${s.queue_position} ahead)` : s.progress ? ` (step ${s.progress.step} / ${s.progress.total})` : "";
  $("detail-status").textContent = `${s.status}${where}${err ? `: ${err.message}` : ""} · ${s.model} · ${new Date(s.created_at * 1000).toLocaleString()}`;
  const img = $("detail-image");
  const url = thumbUrl(s);
  img.hidden = !url;
  if (url) { img.src = url; img.alt = s.outcome?.prompt || s.payload?.prompt || "result"; } else img.removeAttribute("src");
  fillMeta($("detail-meta"), s);
  const rows = Object.entries(s.payload || {}).map(([k, v]) => h("tr", {},
    h("th", { scope: "row", text: k }),
    h("td", { text: v === null ? "null" : typeof v === "string" && v.startsWith("darkroom-blob:") ? "(an input image)" : String(v) })));
  $("detail-params").tBodies[0].replaceChildren(...rows);
  const hasImages = Object.entries(s.payload || {}).some(([k, v]) => IMAGE_PARAM.test(k) && v);
  $("detail-note").textContent = hasImages ? "Input images are kept by the server, not sent back: re-run attaches none; add them in the form." : "";
  $("detail-edit").hidden = !(s.status === "success" && editModel());
  setDownload($("detail-download"), s);
  $("detail-cancel").hidden = TERMINAL.has(s.status);
  $("detail-rerun").disabled = !state.models.some((m) => m.model === s.model);
  if (!dialog.open) dialog.showModal();
}

// -- wiring ------------------------------------------------------------------------------------------

function init() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) { $("key-error").textContent = "Enter a key first."; return; }
    useKey(key).then((ok) => { if (ok) $("f-prompt")?.focus(); });
  });
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", () => {
    if ($("model").value !== state.model?.model) selectModel($("model").value);
  });
  $("gen-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => state.current && cancel(state.current.id));
  $("edit-result").addEventListener("click", () => {
    const s = state.current?.final;
    if (s) useAsInput(s.outcome?.media_urls?.[0]?.url, `result ${s.request_id.slice(0, 8)}`);
  });
  $("refresh").addEventListener("click", () => loadGallery(state.offset));
  $("newer").addEventListener("click", () => loadGallery(state.offset - PAGE_SIZE));
  $("older").addEventListener("click", () => loadGallery(state.offset + PAGE_SIZE));
  const dialog = $("detail");
  $("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  $("detail-rerun").addEventListener("click", () => {
    const s = state.detail;
    dialog.close();
    fillForm(s.model, s.payload);
    $("gen-form").requestSubmit();
  });
  $("detail-edit").addEventListener("click", () => {
    const s = state.detail;
    dialog.close();
    useAsInput(s.outcome?.media_urls?.[0]?.url, `result ${s.request_id.slice(0, 8)}`);
  });
  $("detail-cancel").addEventListener("click", async () => {
    const s = state.detail;
    const after = await cancel(s.request_id);
    if (after) openDetail(s.request_id);
    loadGallery(state.offset);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.key) loadGallery(state.offset); // catch up after the tab was hidden
  });
  const saved = localStorage.getItem(KEY_STORAGE);
  if (saved) useKey(saved);
  else showKeyPanel("");
}

init();
