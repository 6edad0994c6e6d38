// NERLab span-labelling widget (Streamlit custom component v2, no build step).
//
// Python gives `data` = {sentence_id, version, status, text, tokens: [[start, end]...],
// spans: [{start, end, label, suggested?, confidence?}], suggestion: {id, model, confidence,
// pending} or null, labels: [{name, color, hotkey, description}], number, split, annotator,
// updated_at, queue_index, queue_total, ack}. Every change goes back at once as the trigger value
// `action` = {type, sentence_id, version, spans, seq, suggestion}; Python saves it and answers
// with new data whose `ack` echoes `seq`.
//
// A span with `suggested` is a model's suggestion the annotator has not accepted yet: drawn
// dashed, edited like any span (changing its type or its edges makes it the annotator's own).
// `suggestion` in an action is the id of the untaken suggestion shown with the spans sent, so
// that Python records it as taken (and, on Enter, its spans accepted as gold).
//
// Facts about components v2 this relies on (Streamlit 1.67): the HTML is mounted inside a
// ShadowRoot (`parentElement`), so the selection is read with getComposedRanges; this function
// runs again on the same DOM whenever `data` changes, while the returned cleanup runs only on
// unmount, so each run first disposes of the previous run's listeners (kept on the root).

const TYPING_TAGS = new Set(["INPUT", "TEXTAREA", "SELECT"]);
const CONTROL_TAGS = new Set(["BUTTON", "A", "SUMMARY"]);
//: After this long without an answer the widget says so (Esc stops waiting).
const SLOW_MS = 10000;
const NAV_KEYS = new Set(["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp", "PageDown", "PageUp",
  "Enter", "Delete", "Backspace", "Escape", "Home", "End"]);

export default function (component) {
  const { data, parentElement: root, setTriggerValue } = component;
  if (!data || !data.text) {
    return undefined;
  }
  const previous = root.__nerlab;
  if (previous) previous.dispose();
  const memory = previous
    ? previous.memory
    : { seq: 0, pending: 0, pendingAt: 0, lastSent: null, typeahead: [] };
  const ack = data.ack || 0;
  memory.seq = Math.max(memory.seq, ack);
  if (memory.pending && ack >= memory.pending) memory.pending = 0;
  if (data.focus && data.focus !== memory.focus) {
    // The queue's filters changed (e.g. Enter in "Search text"): give the keys back to the
    // sentence, or the next hotkeys would type into the box.
    memory.focus = data.focus;
    const active = document.activeElement;
    if (memory.seenFocus && active && TYPING_TAGS.has(active.tagName)) active.blur();
  }
  memory.seenFocus = true;
  const sameSentence = memory.sentenceId === data.sentence_id;
  memory.sentenceId = data.sentence_id;

  const $ = (sel) => root.querySelector(sel);
  const textEl = $(".nl-text");
  const menuEl = $(".nl-menu");
  const legendEl = $(".nl-legend");
  const statusEl = $(".nl-status");
  const metaEl = $(".nl-meta");
  const busyEl = $(".nl-busy");
  const boxEl = $(".nl-root");

  const text = data.text;
  // Python counts offsets in code points, JavaScript strings in UTF-16 units: they differ after
  // an emoji or another character outside the Basic Multilingual Plane. Convert both ways.
  const unitOf = []; // code-point offset -> UTF-16 offset
  let units = 0;
  for (const ch of text) {
    unitOf.push(units);
    units += ch.length;
  }
  unitOf.push(units);
  const pointOf = new Map(unitOf.map((u, p) => [u, p])); // UTF-16 offset -> code-point offset
  const toUnits = (p) => (p < unitOf.length ? unitOf[p] : text.length);
  const toPoints = (u) => (pointOf.has(u) ? pointOf.get(u) : unitOf.length - 1);
  const tokens = (data.tokens || []).map(([s, e]) => [toUnits(s), toUnits(e)]);
  const labels = data.labels || [];
  const byName = new Map(labels.map((l) => [l.name, l]));
  const byKey = new Map(labels.filter((l) => l.hotkey).map((l) => [l.hotkey.toLowerCase(), l]));

  // What is drawn: the saved spans (and untaken suggestions), or this tab's newer unacknowledged
  // edit of the same sentence.
  let spans = data.spans.map((s) => ({
    start: toUnits(s.start), end: toUnits(s.end), label: s.label,
    suggested: Boolean(s.suggested), confidence: s.confidence === undefined ? null : s.confidence,
  }));
  const last = memory.lastSent;
  if (last && last.sentenceId === data.sentence_id && last.seq > ack) {
    spans = last.shown.map((s) => ({ ...s }));
  }
  const suggestion = data.suggestion || null;
  // The untaken suggestion shown now (its id goes with every change, see the top).
  const pendingSuggestion = suggestion && suggestion.pending ? suggestion.id : null;
  let cursor = sameSentence ? memory.cursor : null; // token index of the keyboard cursor
  let anchor = sameSentence ? memory.anchor : null; // other end of the token selection
  // Index into `spans` of the span clicked for editing. An answer from the server (the save of an
  // earlier change) redraws the sentence: the span's menu stays open if the span is still there.
  let picked = null;
  if (sameSentence && memory.picked) {
    const index = spans.findIndex((s) => s.start === memory.picked.start && s.end === memory.picked.end);
    picked = index < 0 ? null : index;
  }
  let drag = null; // {index, side} while a span edge is dragged

  const tokenOf = new Int32Array(text.length).fill(-1);
  tokens.forEach(([s, e], i) => {
    for (let c = s; c < e && c < text.length; c++) tokenOf[c] = i;
  });

  const sortSpans = () => spans.sort((a, b) => a.start - b.start || a.end - b.end);
  // While the sentence is being replaced (accept, next, previous, undo) keys wait for it.
  const locked = () => memory.pending !== 0;
  const selRange = () => {
    if (cursor === null || cursor === undefined) return null;
    const a = anchor === null || anchor === undefined ? cursor : anchor;
    return [Math.min(a, cursor), Math.max(a, cursor)];
  };

  function remember() {
    memory.cursor = cursor;
    memory.anchor = anchor;
    const sp = picked === null ? null : spans[picked];
    memory.picked = sp ? { start: sp.start, end: sp.end } : null;
  }

  function send(type) {
    memory.seq = Math.max(memory.seq + 1, Date.now());
    const payload = {
      type,
      sentence_id: data.sentence_id,
      version: data.version,
      spans: spans.map(({ start, end, label }) => ({ start: toPoints(start), end: toPoints(end), label })),
      seq: memory.seq,
      suggestion: pendingSuggestion,
    };
    memory.lastSent = {
      seq: memory.seq,
      sentenceId: data.sentence_id,
      version: data.version,
      spans: payload.spans,
      shown: spans.map((sp) => ({ ...sp })),
    };
    if (type !== "edit") {
      memory.pending = memory.seq;
      memory.pendingAt = Date.now();
      const waitingFor = memory.seq;
      setTimeout(() => {
        if (memory.pending === waitingFor && busyEl.isConnected) {
          busyEl.textContent = "still waiting for the server… (Esc stops waiting)";
        }
      }, SLOW_MS);
    }
    busyEl.textContent = "saving…";
    busyEl.hidden = false;
    remember();
    setTriggerValue("action", payload);
  }

  // ------------------------------------------------------------------ drawing

  function el(tag, cls, attrs) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function render() {
    sortSpans();
    const range = selRange();
    const cuts = new Set([0, text.length]);
    tokens.forEach(([s, e]) => {
      cuts.add(s);
      cuts.add(e);
    });
    spans.forEach((sp) => {
      cuts.add(sp.start);
      cuts.add(sp.end);
    });
    const points = [...cuts].filter((c) => c >= 0 && c <= text.length).sort((a, b) => a - b);
    const frag = document.createDocumentFragment();
    let container = frag;
    let open = null;
    let spanIdx = 0;
    for (let k = 0; k + 1 < points.length; k++) {
      const a = points[k];
      const b = points[k + 1];
      while (spanIdx < spans.length && spans[spanIdx].end <= a) spanIdx++;
      const sp = spans[spanIdx];
      if (!open && sp && sp.start === a) {
        const label = byName.get(sp.label);
        const sure = sp.confidence === null || sp.confidence === undefined
          ? "" : ` (confidence ${Math.round(100 * sp.confidence)}%)`;
        open = el("mark", "nl-span" + (picked === spanIdx ? " picked" : "") + (sp.suggested ? " suggested" : ""), {
          "data-span": String(spanIdx),
          "data-label": sp.label,
          "data-start": String(sp.start),
          "data-end": String(sp.end),
          title: sp.suggested
            ? `${sp.label}, suggested by ${suggestion ? suggestion.model : "a model"}${sure} — Enter accepts it; click to change or remove`
            : `${sp.label} — click to change or remove`,
        });
        if (sp.suggested) open.dataset.suggested = "true";
        const colour = label ? label.color : "#dddddd";
        open.style.background = sp.suggested && /^#[0-9a-f]{6}$/i.test(colour) ? colour + "59" : colour;
        if (sp.suggested) open.style.borderColor = colour;
        if (picked === spanIdx) {
          open.appendChild(el("span", "nl-handle l", { "data-side": "l", "data-end": String(sp.start), title: "Drag to resize" }));
        }
        frag.appendChild(open);
        container = open;
      }
      const t = tokenOf[a] !== undefined ? tokenOf[a] : -1;
      const piece = el("span", t >= 0 ? "nl-tok" : "nl-gap", {
        "data-start": String(a),
        "data-end": String(b),
      });
      if (t >= 0) piece.dataset.i = String(t);
      piece.textContent = text.slice(a, b);
      if (range) {
        if (t >= 0 && t >= range[0] && t <= range[1]) piece.classList.add("sel");
        if (t < 0 && range[0] !== range[1] && a >= tokens[range[0]][1] && b <= tokens[range[1]][0]) {
          piece.classList.add("sel");
        }
      }
      if (t >= 0 && t === cursor) piece.classList.add("cur");
      container.appendChild(piece);
      if (open && sp && b === sp.end) {
        const tag = el("span", "nl-tag", { "data-end": String(sp.end) });
        tag.textContent = sp.label;
        open.appendChild(tag);
        if (picked === spanIdx) {
          open.appendChild(el("span", "nl-handle r", { "data-side": "r", "data-end": String(sp.end), title: "Drag to resize" }));
        }
        open = null;
        container = frag;
      }
    }
    textEl.replaceChildren(frag);
    textEl.dataset.start = "0";
    textEl.dataset.end = String(text.length);
    drawMenu();
    remember();
  }

  function drawHead() {
    boxEl.dataset.sentence = String(data.sentence_id);
    boxEl.dataset.version = String(data.version);
    const done = data.status === "labelled";
    statusEl.className = "nl-status " + data.status;
    statusEl.textContent = done ? "✓ done" : "not done yet";
    statusEl.title = done
      ? `Accepted by ${data.annotator || "someone"} at ${data.updated_at}`
      : "Press Enter (or Accept) when the sentence has all its entities";
    const parts = [`Sentence ${data.number}`, data.split];
    if (data.queue_index !== null && data.queue_index !== undefined) {
      parts.push(`${data.queue_index + 1} of ${data.queue_total} in the queue`);
    } else {
      parts.push(`not in the current queue (${data.queue_total} there)`);
    }
    if (data.annotator) parts.push(`last saved by ${data.annotator} at ${data.updated_at}`);
    const shownSuggestions = spans.filter((sp) => sp.suggested).length;
    if (suggestion && data.status !== "labelled") {
      const sure = suggestion.confidence === null || suggestion.confidence === undefined
        ? "" : `, confidence ${Math.round(100 * suggestion.confidence)}%`;
      parts.push(shownSuggestions
        ? `${shownSuggestions} suggestion${shownSuggestions === 1 ? "" : "s"} from ${suggestion.model}${sure} (dashed): Enter accepts, click to fix`
        : `${suggestion.model} suggests no entity here${sure}`);
    }
    metaEl.textContent = parts.join(" · ");
    busyEl.hidden = !(memory.lastSent && memory.lastSent.seq > ack);
  }

  function drawLegend() {
    legendEl.replaceChildren();
    for (const l of labels) {
      const b = el("button", "", { type: "button", "data-label": l.name, title: l.description || l.name });
      const sw = el("span", "nl-swatch");
      sw.style.background = l.color;
      b.appendChild(sw);
      const name = el("b");
      name.textContent = l.name;
      b.appendChild(name);
      if (l.hotkey) {
        const kbd = el("kbd");
        kbd.textContent = l.hotkey;
        b.appendChild(kbd);
      }
      if (l.description) {
        const d = el("span", "nl-desc");
        d.textContent = l.description;
        b.appendChild(d);
      }
      b.addEventListener("mousedown", (e) => e.preventDefault()); // keep the text selection
      b.addEventListener("click", () => applyLabel(l.name));
      legendEl.appendChild(b);
    }
    if (!labels.length) {
      legendEl.textContent = "This project has no entity types yet: add them on the Data page.";
    }
  }

  function drawMenu() {
    if (picked === null || !spans[picked]) {
      menuEl.hidden = true;
      menuEl.replaceChildren();
      return;
    }
    const mark = textEl.querySelector(`mark[data-span="${picked}"]`);
    menuEl.replaceChildren();
    const sp = spans[picked];
    const title = el("div", "nl-desc");
    title.textContent = `“${text.slice(sp.start, sp.end)}” is ${sp.label}. Change to:`;
    menuEl.appendChild(title);
    for (const l of labels) {
      const b = el("button", "", { type: "button", "data-label": l.name, role: "menuitem" });
      const sw = el("span", "nl-swatch");
      sw.style.background = l.color;
      b.appendChild(sw);
      b.appendChild(document.createTextNode(l.name + (l.hotkey ? `  [${l.hotkey}]` : "")));
      if (l.name === sp.label) b.disabled = true;
      b.addEventListener("click", () => applyLabel(l.name));
      menuEl.appendChild(b);
    }
    const rm = el("button", "nl-remove", { type: "button", role: "menuitem", "data-action": "remove" });
    rm.textContent = "✕ Remove  [Del]";
    rm.addEventListener("click", () => removeSelected());
    menuEl.appendChild(rm);
    menuEl.hidden = false;
    if (mark) {
      const box = boxEl.getBoundingClientRect();
      const r = mark.getBoundingClientRect();
      menuEl.style.left = `${Math.max(0, r.left - box.left)}px`;
      menuEl.style.top = `${r.bottom - box.top + 4}px`;
    }
  }

  // ------------------------------------------------------------------ editing

  function addSpan(start, end, label) {
    spans = spans.filter((s) => s.end <= start || s.start >= end);
    spans.push({ start, end, label, suggested: false, confidence: null });
    sortSpans();
  }

  function applyLabel(name) {
    if (locked()) return;
    if (picked !== null && spans[picked]) {
      if (spans[picked].label !== name) {
        spans[picked].label = name;
        spans[picked].suggested = false;
        picked = null;
        render();
        send("edit");
      } else {
        picked = null;
        render();
      }
      return;
    }
    const range = selRange();
    if (!range || !tokens.length) {
      flash("Select one or more words first (mouse, or ← → and Shift).");
      return;
    }
    const start = tokens[range[0]][0];
    const end = tokens[range[1]][1];
    if (range[0] === range[1]) {
      // One word inside an existing span: change that span's type (as clicking it would).
      const host = spans.find((s) => s.start <= start && s.end >= end);
      if (host) {
        if (host.label !== name) {
          host.label = name;
          host.suggested = false;
          render();
          send("edit");
        }
        return;
      }
    }
    addSpan(start, end, name);
    cursor = range[1];
    anchor = null;
    render();
    send("edit");
  }

  function removeSelected() {
    if (locked()) return;
    const before = spans.length;
    if (picked !== null && spans[picked]) {
      spans.splice(picked, 1);
    } else {
      const range = selRange();
      if (!range) return;
      const start = tokens[range[0]][0];
      const end = tokens[range[1]][1];
      spans = spans.filter((s) => s.end <= start || s.start >= end);
    }
    picked = null;
    render();
    if (spans.length !== before) send("edit");
  }

  function flash(message) {
    metaEl.textContent = message;
    setTimeout(() => {
      if (root.__nerlab && root.__nerlab.dispose === dispose) drawHead();
    }, 2500);
  }

  // ------------------------------------------------------------------ mouse

  function charAt(node, offset) {
    if (node.nodeType === Node.TEXT_NODE) {
      const parent = node.parentElement;
      if (parent && parent.matches(".nl-tok, .nl-gap")) return Number(parent.dataset.start) + offset;
      const box = parent && parent.closest("[data-end]");
      return box ? Number(box.dataset.end) : 0;
    }
    if (offset < node.childNodes.length) return charAt(node.childNodes[offset], 0);
    const box = node.closest ? node.closest("[data-end]") : null;
    return box ? Number(box.dataset.end) : text.length;
  }

  function readSelection() {
    const sel = window.getSelection();
    if (!sel || !sel.rangeCount) return null;
    let range = null;
    if (typeof sel.getComposedRanges === "function") {
      try {
        range = sel.getComposedRanges({ shadowRoots: [root] })[0];
      } catch (err) {
        range = sel.getComposedRanges(root)[0];
      }
    } else {
      range = sel.getRangeAt(0);
    }
    if (!range || range.collapsed) return null;
    const inStart = textEl.contains(range.startContainer);
    const inEnd = textEl.contains(range.endContainer);
    if (!inStart && !inEnd) return null;
    const start = inStart ? charAt(range.startContainer, range.startOffset) : 0;
    const end = inEnd ? charAt(range.endContainer, range.endOffset) : text.length;
    return start < end ? [start, end] : null;
  }

  function snap(start, end) {
    let lo = -1;
    let hi = -1;
    tokens.forEach(([s, e], i) => {
      if (s < end && e > start) {
        if (lo < 0) lo = i;
        hi = i;
      }
    });
    return lo < 0 ? null : [lo, hi];
  }

  function onMouseUp(e) {
    if (drag) return;
    if (e.target.closest && e.target.closest(".nl-handle")) return;
    const chars = readSelection();
    if (chars) {
      const toks = snap(chars[0], chars[1]);
      window.getSelection().removeAllRanges();
      picked = null;
      if (toks) {
        anchor = toks[0];
        cursor = toks[1];
      }
      render();
      return;
    }
    const mark = e.target.closest && e.target.closest("mark.nl-span");
    if (mark) {
      const idx = Number(mark.dataset.span);
      picked = picked === idx ? null : idx;
      anchor = cursor = null;
      render();
      return;
    }
    const tok = e.target.closest && e.target.closest(".nl-tok");
    picked = null;
    if (tok) {
      anchor = null;
      cursor = Number(tok.dataset.i);
    } else {
      anchor = cursor = null;
    }
    render();
  }

  function onHandleDown(e) {
    const handle = e.target.closest && e.target.closest(".nl-handle");
    if (!handle || picked === null) return;
    e.preventDefault();
    e.stopPropagation();
    drag = { index: picked, side: handle.dataset.side, original: { ...spans[picked] } };
  }

  function onDragMove(e) {
    if (!drag) return;
    const hit = root.elementFromPoint ? root.elementFromPoint(e.clientX, e.clientY) : null;
    const tok = hit && hit.closest ? hit.closest(".nl-tok") : null;
    if (!tok) return;
    const ti = Number(tok.dataset.i);
    const sp = spans[drag.index];
    if (drag.side === "l" && tokens[ti][0] < sp.end) sp.start = tokens[ti][0];
    if (drag.side === "r" && tokens[ti][1] > sp.start) sp.end = tokens[ti][1];
    render();
  }

  function onDragEnd() {
    if (!drag) return;
    const sp = spans[drag.index];
    const changed = sp.start !== drag.original.start || sp.end !== drag.original.end;
    drag = null;
    if (!changed) return;
    sp.suggested = false;
    spans = spans.filter((s) => s === sp || s.end <= sp.start || s.start >= sp.end);
    sortSpans();
    picked = spans.indexOf(sp);
    render();
    send("edit");
  }

  // ------------------------------------------------------------------ keyboard

  function onKey(e) {
    if (e.defaultPrevented || !textEl.isConnected) return;
    const target = e.composedPath()[0];
    if (target && target.nodeType === Node.ELEMENT_NODE) {
      if (TYPING_TAGS.has(target.tagName) || target.isContentEditable) return;
      if ((CONTROL_TAGS.has(target.tagName) || target.getAttribute("role") === "button") &&
          (e.key === "Enter" || e.key === " ")) {
        return; // a focused button keeps its own Enter / Space
      }
    }
    const ctrl = e.ctrlKey || e.metaKey;
    const isUndo = ctrl && !e.altKey && !e.shiftKey && e.key.toLowerCase() === "z";
    if (!isUndo && (ctrl || e.altKey)) return;
    const label = e.key.length === 1 ? byKey.get(e.key.toLowerCase()) : undefined;
    if (!isUndo && !NAV_KEYS.has(e.key) && !label) return;
    e.preventDefault();
    e.stopPropagation();
    const stroke = { key: isUndo ? "Undo" : e.key, shiftKey: e.shiftKey };
    if (locked()) {
      if (stroke.key === "Escape") {
        // Stop waiting for an answer that does not come (the keys typed meanwhile are dropped).
        memory.pending = 0;
        memory.typeahead.length = 0;
        busyEl.hidden = true;
        return;
      }
      // Type-ahead: keys pressed while the next sentence loads are replayed on it.
      if (memory.typeahead.length < 50) memory.typeahead.push(stroke);
      return;
    }
    handleKey(stroke);
  }

  function handleKey(stroke) {
    const key = stroke.key;
    const n = tokens.length;
    const label = key.length === 1 ? byKey.get(key.toLowerCase()) : undefined;
    switch (key) {
      case "ArrowRight":
      case "ArrowLeft": {
        if (!n) return;
        const step = key === "ArrowRight" ? 1 : -1;
        if (cursor === null || cursor === undefined) {
          cursor = step > 0 ? 0 : n - 1;
          anchor = null;
        } else {
          if (!stroke.shiftKey) anchor = null;
          else if (anchor === null || anchor === undefined) anchor = cursor;
          cursor = Math.min(n - 1, Math.max(0, cursor + step));
        }
        picked = null;
        render();
        return;
      }
      case "Home":
      case "End":
        if (!n) return;
        cursor = key === "Home" ? 0 : n - 1;
        anchor = null;
        picked = null;
        render();
        return;
      case "ArrowDown":
      case "PageDown":
        send("next");
        return;
      case "ArrowUp":
      case "PageUp":
        send("prev");
        return;
      case "Enter":
        send("accept");
        return;
      case "Delete":
      case "Backspace":
        removeSelected();
        return;
      case "Escape":
        anchor = cursor = picked = null;
        render();
        return;
      case "Undo":
        send("undo");
        return;
      default:
        if (label) applyLabel(label.name);
    }
  }

  // ------------------------------------------------------------------ wiring

  const onDocMouseDown = (e) => {
    const path = e.composedPath();
    if (!path.includes(boxEl) && picked !== null) {
      picked = null;
      render();
    }
  };
  textEl.addEventListener("mouseup", onMouseUp);
  textEl.addEventListener("mousedown", onHandleDown);
  document.addEventListener("keydown", onKey, true);
  document.addEventListener("mousemove", onDragMove);
  document.addEventListener("mouseup", onDragEnd);
  document.addEventListener("mousedown", onDocMouseDown);

  const dispose = () => {
    textEl.removeEventListener("mouseup", onMouseUp);
    textEl.removeEventListener("mousedown", onHandleDown);
    document.removeEventListener("keydown", onKey, true);
    document.removeEventListener("mousemove", onDragMove);
    document.removeEventListener("mouseup", onDragEnd);
    document.removeEventListener("mousedown", onDocMouseDown);
    if (root.__nerlab && root.__nerlab.dispose === dispose) delete root.__nerlab;
  };
  root.__nerlab = { dispose, memory };

  drawHead();
  drawLegend();
  render();
  while (memory.typeahead.length && !locked()) handleKey(memory.typeahead.shift());
  return dispose;
}
