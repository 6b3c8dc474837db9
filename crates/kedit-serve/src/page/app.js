// The page: reads /api/state on load (so a reload shows the last edit and trace), sends
// facts to /api/edit and /api/trace, and draws what comes back. No framework, no build.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
};
const pct = (p) => (100 * p).toFixed(p >= 0.1 ? 0 : 1) + "%";
// Tokens as the model sees them: a leading space shown, a newline escaped.
const tokenText = (t) => t.replace(/\n/g, "\\n").replace(/^ /, "␣");

let state = null;

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  const json = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(json.error || `HTTP ${res.status}`);
  return json;
}

function setBusy(busy, what) {
  const s = $("status");
  s.className = "status " + (busy ? "busy" : "idle");
  s.textContent = busy ? (what || "busy…") : "ready";
  for (const b of document.querySelectorAll("button")) b.disabled = busy;
  document.body.classList.toggle("busy", busy);
}

function showError(e) {
  const p = $("error");
  p.hidden = !e;
  p.textContent = e ? String(e.message || e) : "";
}

async function run(what, f) {
  showError(null);
  setBusy(true, what);
  try { await f(); } catch (e) { showError(e); } finally { setBusy(false); }
}

function renderMethods(methods) {
  const select = $("method");
  const previous = select.value;
  select.replaceChildren();
  const list = $("methods");
  list.replaceChildren();
  for (const m of methods) {
    const label = m.available ? m.name : `${m.name} — unavailable`;
    const opt = el("option", { value: m.name }, label);
    if (!m.available) opt.disabled = true;
    select.append(opt);
    list.append(el("li", { class: m.available ? "" : "off", title: m.summary },
      el("span", { class: "name" }, m.name), " ",
      m.available ? m.family : (m.note || "unavailable"),
      m.available && m.note ? el("div", { class: "note" }, m.note) : null));
  }
  const preferred = methods.find((m) => m.name === previous && m.available)
    || methods.find((m) => m.name === "rome" && m.available)
    || methods.find((m) => m.available);
  if (preferred) select.value = preferred.name;
  methodNote();
}

function methodNote() {
  const m = (state?.methods || []).find((x) => x.name === $("method").value);
  $("method-note").textContent = m ? m.summary + (m.note ? ` (${m.note})` : "") : "";
}

function renderEdits(edits) {
  const ol = $("edits");
  ol.replaceChildren();
  $("no-edits").hidden = edits.length > 0;
  $("revert-all").hidden = edits.length === 0;
  for (const e of edits) {
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", class: "small secondary", onclick: () => revert(e.id) }, "Revert"),
      el("a", { href: `/api/edits/${e.id}/file`, download: "", class: "button small secondary" }, "Download"));
    if (state?.save_dir) {
      actions.append(el("button", { type: "button", class: "small secondary", onclick: () => save(e.id) }, "Save"));
    }
    ol.append(el("li", {},
      el("div", { class: "fact" }, `${e.prompt} → ${e.target}`),
      el("div", { class: "meta" }, `#${e.id} · ${e.method} · ${e.kind} · ${e.seconds.toFixed(1)} s · ${e.changed}`),
      actions));
  }
}

function bars(top) {
  const max = Math.max(...top.map((t) => t.prob), 1e-9);
  return top.map((t) => el("div", { class: "bar" },
    el("span", { class: "tok", title: t.text }, tokenText(t.text)),
    el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * t.prob / max).toFixed(1)}%` })),
    el("span", { class: "p" }, pct(t.prob))));
}

function side(kind, probe, changed) {
  return el("div", { class: kind + (changed && kind === "after" ? " changed" : "") },
    el("div", { class: "side-title" }, kind),
    el("div", { class: "answer" }, el("span", { class: "lead" }, "… "), probe.answer.trim() || "(nothing)"),
    ...bars(probe.top));
}

// Whether a probe behaved as an edit should make it: the prompt and paraphrase answer the
// new target; a neighbour keeps its most likely next token (later words may drift).
function verdict(role, before, after, target) {
  if (role === "neighbour") {
    const [b, a] = [before.top[0], after.top[0]];
    return b.id === a.id
      ? ["ok", `keeps its answer “${b.text.trim()}”, as it should`]
      : ["no", `answer changed from “${b.text.trim()}” to “${a.text.trim()}”: the edit leaked here`];
  }
  const starts = after.answer.trim().toLowerCase().startsWith(target.trim().toLowerCase());
  return starts ? ["ok", `answers “${target}”`] : ["no", `does not answer “${target}”`];
}

function renderCompare(last) {
  const box = $("compare");
  box.replaceChildren();
  if (!last) {
    $("compare-title").textContent = "Before and after";
    $("compare-sub").textContent = "Make an edit to compare the model's answers.";
    return;
  }
  const e = last.edit;
  $("compare-title").textContent = `Before and after edit #${e.id} (${e.method})`;
  $("compare-sub").textContent =
    `“${e.prompt}” → “${e.target}” (subject “${e.subject}”), ${e.seconds.toFixed(1)} s; ${e.changed}.`;
  last.before.forEach((b, i) => {
    const a = last.after[i];
    const [cls, text] = verdict(b.role, b, a, e.target);
    box.append(el("div", { class: "probe" },
      el("span", { class: "tag " + b.role }, b.role),
      el("div", { class: "prompt" }, b.prompt),
      el("div", { class: "pair" }, side("before", b), side("after", a, b.answer !== a.answer)),
      el("div", { class: "verdict " + cls }, text)));
  });
}

const KINDS = [["hidden", "single restored state", [75, 0, 130]],
  ["mlp", "MLP, 10-layer window", [0, 110, 60]], ["attn", "attention, 10-layer window", [180, 20, 20]]];

function heatmap(t, kind, rgb) {
  const grid = t[kind];
  const ns = "http://www.w3.org/2000/svg";
  const rows = grid.length, cols = t.n_layers;
  const left = 64, top = 4, cw = 5, ch = 14, bottom = 26;
  const w = left + cols * cw + 4, h = top + rows * ch + bottom;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const add = (name, attrs, text) => {
    const n = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text != null) n.textContent = text;
    svg.append(n);
    return n;
  };
  const lo = t.corrupted_prob;
  const hi = Math.max(lo + 1e-9, ...grid.flat());
  const labels = t.tokens.map((s, i) => {
    const star = i >= t.subject_range[0] && i < t.subject_range[1] ? "*" : "";
    return tokenText(s).slice(0, 10) + star;
  });
  grid.forEach((row, r) => {
    add("text", { x: left - 4, y: top + r * ch + ch * 0.72, "text-anchor": "end", "font-size": 9,
      "font-family": "monospace", fill: "#333" }, labels[r]);
    row.forEach((p, c) => {
      const f = Math.min(1, Math.max(0, (p - lo) / (hi - lo)));
      const mix = rgb.map((v) => Math.round(255 + (v - 255) * f));
      const cell = add("rect", { x: left + c * cw, y: top + r * ch, width: cw + 0.3, height: ch + 0.3,
        fill: `rgb(${mix.join(",")})` });
      const title = document.createElementNS(ns, "title");
      title.textContent = `${labels[r]} · layer ${c}: p = ${p.toFixed(3)}`;
      cell.append(title);
    });
  });
  for (let l = 0; l < cols; l += 5) {
    add("text", { x: left + l * cw + cw / 2, y: top + rows * ch + 11, "text-anchor": "middle",
      "font-size": 8, fill: "#555" }, String(l));
  }
  add("text", { x: left + cols * cw / 2, y: top + rows * ch + 22, "text-anchor": "middle", "font-size": 8.5,
    fill: "#555" }, `layer · p(${tokenText(t.answer)}) ${lo.toFixed(2)} → ${hi.toFixed(2)}`);
  return svg;
}

function renderTrace(t) {
  const box = $("trace");
  box.replaceChildren();
  if (!t) return;
  box.append(el("div", { class: "trace-facts" },
    `“${t.prompt}” → ${tokenText(t.answer)}: p = ${t.clean_prob.toFixed(3)} clean, `
    + `${t.corrupted_prob.toFixed(3)} with “${t.subject}”* corrupted `
    + `(${t.options.samples} samples, ${t.seconds.toFixed(1)} s), `
    + (t.edits_applied.length
      ? `with edit${t.edits_applied.length > 1 ? "s" : ""} ${t.edits_applied.map((i) => "#" + i).join(", ")} applied.`
      : "on the model as loaded, before any edit.")));
  const maps = el("div", { class: "heatmaps" });
  for (const [kind, title, rgb] of KINDS) {
    maps.append(el("div", {}, el("h3", {}, title), heatmap(t, kind, rgb)));
  }
  box.append(maps);
}

function render() {
  $("model").textContent = state.model;
  renderMethods(state.methods);
  renderEdits(state.edits);
  renderCompare(state.last);
  renderTrace(state.trace);
  setBusy(state.busy, "busy (another edit or trace)");
  // Someone else's work is running: look again until it ends, then show its result.
  if (state.busy) setTimeout(() => refresh().catch(showError), 2000);
}

async function refresh() {
  state = await api("/api/state");
  render();
}

function fact() {
  return {
    method: $("method").value,
    prompt: $("prompt").value,
    subject: $("subject").value,
    target: $("target").value,
    paraphrase: $("paraphrase").value,
    neighbours: $("neighbours").value.split("\n").map((s) => s.trim()).filter(Boolean),
  };
}

$("fact").onsubmit = (ev) => {
  ev.preventDefault();
  run("editing…", async () => { await api("/api/edit", fact()); await refresh(); });
};
$("do-trace").onclick = () => run("tracing…", async () => {
  const f = fact();
  await api("/api/trace", { prompt: f.prompt, subject: f.subject, samples: 3 });
  await refresh();
});
$("method").onchange = methodNote;
$("revert-all").onclick = () => run("reverting…", async () => { await api("/api/revert-all", {}); await refresh(); });

function revert(id) {
  run("reverting…", async () => { await api(`/api/edits/${id}/revert`, {}); await refresh(); });
}

function save(id) {
  run("saving…", async () => {
    const r = await api(`/api/edits/${id}/save`, {});
    await refresh();
    $("compare-sub").textContent = `Saved edit #${id} to ${r.file}.`;
  });
}

refresh().catch(showError);
