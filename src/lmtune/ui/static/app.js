// lmtune ui: renders each page from the JSON API; live views use server-sent events.
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : v ?? "–");
const qs = new URLSearchParams(location.search);
const app = $("#app");
const COUNT_KEYS = new Set(["step", "epoch", "time", "tokens", "elapsed_s", "eval_examples", "eval_tokens", "eval_pairs", "event"]);

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts), data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}
function table(head, rows, cls = "") {
  return `<table class="${cls}"><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>` +
    rows.map((r) => `<tr${r.cls ? ` class="${r.cls}"` : ""}>${(r.cells || r).map((c) => `<td>${c}</td>`).join("")}</tr>`).join("") + "</table>";
}
function sortable(tbl) {
  tbl.querySelectorAll("th").forEach((th, i) => th.addEventListener("click", () => {
    const rows = [...tbl.querySelectorAll("tr")].slice(1), dir = th.dataset.dir === "1" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "1" : "-1";
    rows.sort((a, b) => {
      const x = a.children[i].textContent, y = b.children[i].textContent, nx = parseFloat(x), ny = parseFloat(y);
      return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
    }).forEach((r) => tbl.appendChild(r));
  }));
}
const runLink = (n) => `<a href="/run?name=${encodeURIComponent(n)}">${esc(n)}</a>`;

// ---- Runs: every run under ROOT, refreshed while runs progress
async function pageRuns() {
  app.innerHTML = `<h2>Runs</h2><p><input id="filter" type="text" placeholder="filter (name, task, model, status)">
    <button id="cmp">Compare selected</button></p><div id="runs"></div>`;
  const draw = async () => {
    const rows = await api("/api/runs"), f = $("#filter").value.toLowerCase();
    const keep = rows.filter((r) => !f || JSON.stringify(r).toLowerCase().includes(f));
    const checked = new Set([...document.querySelectorAll(".pick:checked")].map((c) => c.value));
    $("#runs").innerHTML = keep.length ? table(["", "name", "task", "base model", "adapter", "status", "best metric", "value", "steps", "time s", "tokens/s"],
      keep.map((r) => [`<input type=checkbox class=pick value="${esc(r.name)}"${checked.has(r.name) ? " checked" : ""}>`, runLink(r.name), esc(r.task), esc(r.model), esc(r.adapter),
        `<span class="status-${esc(r.status.split(" ")[0])}">${esc(r.status)}</span>`, esc(r.best_metric), fmt(r.best_value), fmt(r.steps), fmt(r.time_s), fmt(r.tokens_per_s)]), "runs")
      : `<p class="muted">No runs under this root yet: start one from <a href="/new">New run</a>.</p>`;
    const t = $("#runs table"); if (t) sortable(t);
  };
  $("#filter").addEventListener("input", draw);
  $("#cmp").addEventListener("click", () => {
    const names = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
    location.href = `/compare?names=${encodeURIComponent(names.join(","))}`;
  });
  await draw(); setInterval(draw, 3000);
}

// ---- Run: live curves, config, data report, errors, confusion matrix, actions
function curves(events) {
  const train = events.filter((e) => e.event === "train"), evals = events.filter((e) => e.event === "eval");
  const out = { loss: [{ label: "train loss", points: train.map((e) => [e.step, e.loss]) }], lr: [{ label: "lr", points: train.map((e) => [e.step, e.lr]) }] };
  const keys = new Set(evals.flatMap((e) => Object.keys(e).filter((k) => !COUNT_KEYS.has(k) && typeof e[k] === "number")));
  keys.forEach((k) => (out[k] = [{ label: k, points: evals.map((e) => [e.step, e[k]]) }]));
  return out;
}
function drawCurves(el, events) {
  const c = curves(events);
  Object.entries(c).forEach(([name, series]) => {
    let cv = el.querySelector(`canvas[data-name="${CSS.escape(name)}"]`);
    if (!cv) { cv = document.createElement("canvas"); cv.width = 420; cv.height = 200; cv.dataset.name = name; el.appendChild(cv); }
    drawChart(cv, name, series);
  });
}
async function pageRun() {
  const name = qs.get("name"), d = await api(`/api/run?name=${encodeURIComponent(name)}`), r = d.row;
  const link = (f) => (d.files[f] ? `<a href="/files/${encodeURIComponent(name)}/${f}" target="_blank">${f}</a>` : "");
  app.innerHTML = `<h2>${esc(name)} <span id="status" class="status-${esc(r.status.split(" ")[0])}">${esc(r.status)}</span></h2>
    <p>${esc(r.task)} · ${esc(r.model)} · adapter ${esc(r.adapter)} · step <b id="step">${fmt(r.steps)}</b> · ${link("report.html")} ${link("MODEL_CARD.md")} ${link("data_report.md")}</p>
    <p><button data-a="stop">Stop</button><button data-a="resume">Resume</button><button data-a="export">Export</button>
      <input id="evalfile" type="text" placeholder="data file under the root"><button data-a="eval">Evaluate on file</button> <span id="msg"></span></p>
    <div id="curves" class="row"></div><div id="details"></div>`;
  document.querySelectorAll("button[data-a]").forEach((b) => b.addEventListener("click", async () => {
    try { const res = await api("/api/action", { name, action: b.dataset.a, data: $("#evalfile").value }); $("#msg").className = "ok"; $("#msg").textContent = `${b.dataset.a}: started (pid ${res.pid})`; }
    catch (e) { $("#msg").className = "err"; $("#msg").textContent = e.message; }
  }));
  runDetails(d);
  const events = [], es = new EventSource(`/api/stream?name=${encodeURIComponent(name)}`);
  es.onmessage = (m) => { const e = JSON.parse(m.data); events.push(e); if (e.step !== undefined && e.event === "train") $("#step").textContent = e.step; drawCurves($("#curves"), events); };
  const refresh = setInterval(() => api(`/api/run?name=${encodeURIComponent(name)}`).then(runDetails), 5000);
  es.addEventListener("status", (m) => { const s = JSON.parse(m.data); $("#status").textContent = s; $("#status").className = `status-${s.split(" ")[0]}`; if (s !== "running") { clearInterval(refresh); api(`/api/run?name=${encodeURIComponent(name)}`).then(runDetails); } });
}
function runDetails(d) {
  let html = "";
  const ev = d.eval || (d.summary || {}).test;
  const cm = ev && ((ev.details || {}).confusion_matrix || ev.confusion_matrix);
  if (cm) {
    html += `<h3>Confusion matrix (${esc((d.eval || {}).split || "test")} split; rows gold, columns predicted)</h3>` + table(["", ...cm.labels.map(esc)], cm.matrix.map((row, i) => [esc(cm.labels[i]), ...row.map(fmt)]));
  }
  if (d.errors.length) {
    const golds = [...new Set(d.errors.map((e) => e.gold ?? e.label))], preds = [...new Set(d.errors.map((e) => e.pred ?? e.predicted))];
    html += `<h3>Errors (${d.errors.length})</h3><p>gold <select id="fg"><option value="">any</option>${golds.map((g) => `<option>${esc(g)}</option>`).join("")}</select>
      predicted <select id="fp"><option value="">any</option>${preds.map((g) => `<option>${esc(g)}</option>`).join("")}</select></p><div id="errs"></div>`;
  }
  const sm = d.samples, gens = (sm && sm.samples) || [];
  if (gens.length) {
    const gen = (t) => (t == null ? `<span class="muted">(not generated)</span>` : t.trim() ? esc(t) : `<span class="muted">(empty)</span>`);
    html += `<h3>Sample generations (${gens.length} ${esc(sm.split)} prompts, ${esc(sm.decoding)}, at most ${fmt(sm.max_new_tokens)} new tokens)</h3>` +
      Object.entries(sm.notes || {}).map(([k, v]) => `<p class="muted">${esc(k)} training: ${esc(v)}</p>`).join("") +
      (gens.some((g) => g.reference != null)
        ? table(["prompt", "reference", "before training", "after training"], gens.map((g) => [esc(g.prompt), g.reference == null ? "" : `${esc(g.reference)} <span class="muted">(${esc(g.reference_kind)})</span>`, gen(g.before), gen(g.after)]), "samples")
        : table(["prompt", "before training", "after training"], gens.map((g) => [esc(g.prompt), gen(g.before), gen(g.after)]), "samples"));
  }
  if (d.summary) html += `<h3>Summary</h3><pre>${esc(JSON.stringify(d.summary, null, 2))}</pre>`;
  html += `<h3>Config</h3><pre>${esc(d.config)}</pre>`;
  if (d.rejects.length) html += `<h3>Rejected rows (first ${d.rejects.length})</h3>` + table(["source", "stage", "reason"], d.rejects.map((r) => [esc(r.source), esc(r.stage), esc(r.reason)]));
  if (d.log) html += `<h3>Console log</h3><pre>${esc(d.log)}</pre>`;
  $("#details").innerHTML = html;
  const drawErrs = () => {
    const g = $("#fg").value, p = $("#fp").value;
    const rows = d.errors.filter((e) => (!g || String(e.gold ?? e.label) === g) && (!p || String(e.pred ?? e.predicted) === p));
    $("#errs").innerHTML = table(["text", "gold", "predicted", "confidence"], rows.slice(0, 200).map((e) => [esc(e.text), esc(e.gold ?? e.label), esc(e.pred ?? e.predicted), fmt(e.confidence)]));
  };
  if (d.errors.length) { $("#fg").onchange = drawErrs; $("#fp").onchange = drawErrs; drawErrs(); }
}

// ---- Compare 2-5 runs: overlaid curves, config diff, metrics
async function pageCompare() {
  const names = (qs.get("names") || "").split(",").filter(Boolean);
  if (names.length < 2) { app.innerHTML = `<h2>Compare</h2><p class="muted">Pick 2 to 5 runs on the <a href="/">Runs</a> page.</p>`; return; }
  const d = await api(`/api/compare?names=${encodeURIComponent(names.join(","))}`);
  app.innerHTML = `<h2>Compare ${names.map(runLink).join(", ")}</h2><div id="curves" class="row"></div><h3>Config diff</h3><div id="diff"></div><h3>Metrics</h3><div id="metrics"></div>`;
  const per = Object.fromEntries(names.map((n) => [n, curves(d.events[n] || [])]));
  const metrics = [...new Set(Object.values(per).flatMap((c) => Object.keys(c)))];
  metrics.forEach((m) => {
    const cv = document.createElement("canvas"); cv.width = 420; cv.height = 200; cv.dataset.name = m; $("#curves").appendChild(cv);
    drawChart(cv, m, names.map((n) => ({ label: n, points: ((per[n][m] || [])[0] || { points: [] }).points })));
  });
  $("#diff").innerHTML = d.diff.length ? table(["key", ...names.map(esc)], d.diff.map((r) => [esc(r.key), ...names.map((n) => esc(JSON.stringify(r.values[n])))])) : `<p class="muted">The configs are the same.</p>`;
  const keys = ["best_metric", "best_metric_value", "best_step", "train_steps", "train_runtime_s", "train_tokens_per_s", "final_train_loss"];
  $("#metrics").innerHTML = table(["", ...names.map(esc)], keys.map((k) => [k, ...names.map((n) => esc(fmt((d.summaries[n] || {})[k])))]));
}

// ---- New run: shipped config or pasted YAML, validated as the CLI does, then launched
async function pageNew() {
  const [configs, files] = await Promise.all([api("/api/configs"), api("/api/datafiles")]);
  app.innerHTML = `<h2>New run</h2>
    <p>Shipped config <select id="pick"><option value="">(paste your own)</option>${Object.keys(configs).map((c) => `<option>${esc(c)}</option>`).join("")}</select>
      · data file <select id="data"><option value="">(as in the config)</option>${files.map((f) => `<option>${esc(f)}</option>`).join("")}</select>
      · upload <input id="upload" type="file" accept=".jsonl,.csv,.tsv"></p>
    <textarea id="yaml" rows="22" spellcheck="false"></textarea>
    <p>Overrides (one key=value per line, e.g. train.lr=1e-4)</p><textarea id="over" rows="3"></textarea>
    <p><button id="check">Validate</button><button id="plan">Memory plan</button><button id="go">Launch</button> <span id="msg"></span></p><div id="problems"></div><pre id="plantable" hidden></pre>`;
  $("#pick").onchange = () => { $("#yaml").value = configs[$("#pick").value] || ""; };
  $("#upload").onchange = async () => {
    const f = $("#upload").files[0]; if (!f) return;
    const r = await fetch(`/api/upload?filename=${encodeURIComponent(f.name)}`, { method: "POST", body: f });
    const d = await r.json(); if (!r.ok) { $("#msg").textContent = d.error; return; }
    $("#data").insertAdjacentHTML("beforeend", `<option selected>${esc(d.path)}</option>`);
  };
  const overrides = () => [...$("#over").value.split("\n").map((s) => s.trim()).filter(Boolean), ...($("#data").value ? [`data.train=${$("#data").value}`] : [])];
  const check = async () => {
    const d = await api("/api/validate", { yaml: $("#yaml").value, overrides: overrides() });
    $("#problems").innerHTML = d.ok ? `<p class="ok">valid</p>` : `<div class="err">${d.problems.map(esc).join("\n")}</div>`;
    return d.ok;
  };
  $("#check").onclick = check;
  $("#plan").onclick = async () => {
    if (!(await check())) return;
    try { const d = await api("/api/plan", { yaml: $("#yaml").value, overrides: overrides() }); $("#plantable").hidden = false; $("#plantable").textContent = d.lines.join("\n"); }
    catch (e) { $("#problems").innerHTML = `<div class="err">${esc(e.message)}</div>`; }
  };
  $("#go").onclick = async () => {
    if (!(await check())) return;
    try { const d = await api("/api/launch", { yaml: $("#yaml").value, overrides: overrides() }); location.href = `/run?name=${encodeURIComponent(d.name)}`; }
    catch (e) { $("#problems").innerHTML = `<div class="err">${esc(e.message)}</div>`; }
  };
}

// ---- Registry: versions with gate results and metrics; release and rollback
async function pageRegistry() {
  const regs = await api("/api/registries");
  if (!regs.length) { app.innerHTML = `<h2>Registry</h2><p class="muted">No registry under this root (a pipeline release creates one).</p>`; return; }
  app.innerHTML = `<h2>Registry</h2>` + regs.map((g, i) => `<h3>${esc(g.path)}</h3>` +
    table(["version", "current", "released", "metric", "value", "run", "gate / metrics", ""], g.versions.map((v) => ({ cls: v.current ? "cur" : "", cells: [esc(v.version), v.current ? "current" : "", esc(v.released_at), esc(v.metric), fmt(v.value), esc(v.run), `<small>${esc(JSON.stringify(v.metrics))}</small>`,
      v.current ? "" : `<button data-reg="${esc(g.path)}" data-v="${esc(v.version)}">Roll back to this</button>`] }))) +
    `<p>Release a finished run: <input type=text id="rel${i}" placeholder="run folder under the root"><button data-release="${esc(g.path)}" data-i="${i}">Release</button></p>`).join("") + `<p id="msg"></p>`;
  document.querySelectorAll("button[data-v]").forEach((b) => (b.onclick = () => act({ action: "rollback", registry: b.dataset.reg, version: b.dataset.v })));
  document.querySelectorAll("button[data-release]").forEach((b) => (b.onclick = () => act({ action: "release", registry: b.dataset.release, run: $(`#rel${b.dataset.i}`).value })));
  async function act(body) { try { await api("/api/registry", body); pageRegistry(); } catch (e) { $("#msg").className = "err"; $("#msg").textContent = e.message; } }
}

// ---- Monitor: accuracy and drift per recorded batch, alerts highlighted
async function pageMonitor() {
  const mons = await api("/api/monitors");
  app.innerHTML = `<h2>Monitor</h2>` + (mons.length ? mons.map((m) => `<h3>${esc(m.path)} ${m.version ? "· " + esc(m.version) : ""}</h3>` + (m.problem ? `<p class="err">${esc(m.problem)}</p>` : "") +
    table(["check", "status", "value", "threshold", "detail"], m.checks.map((c) => ({ cls: c.status === "ALERT" ? "alert" : "", cells: [esc(c.name), esc(c.status), fmt(c.value), fmt(c.threshold), esc(c.detail)] }))) +
    table(m.columns.map((c) => c.replace("METRIC", m.metric)), m.records.map((r) => r.map((v) => esc(fmt(v)))))).join("") : `<p class="muted">No monitor database under this root (\`lmtune monitor record\` writes one).</p>`);
}

// ---- Playground: chat (streamed) with a causal model, or classify with a classifier
async function pagePlayground() {
  const models = await api("/api/models");
  app.innerHTML = `<h2>Playground</h2><p>Model <select id="model">${models.map((m) => `<option value="${esc(m.id)}" data-task="${esc(m.task)}">${esc(m.id)} (${esc(m.task)})</option>`).join("")}</select></p>
    <div class="card chat" id="chat"></div><p><input id="say" type="text" placeholder="message"><button id="send">Send</button></p>
    <h3>Classify</h3><p><input id="ctext" type="text" placeholder="text"><button id="cls">Classify</button></p><div id="scores"></div><p id="msg" class="err"></p>`;
  const history = [];
  $("#send").onclick = async () => {
    const text = $("#say").value.trim(); if (!text) return;
    history.push({ role: "user", content: text }); $("#say").value = "";
    $("#chat").insertAdjacentHTML("beforeend", `<p class="user">user: ${esc(text)}</p><p class="assistant">assistant: <span class="answer"></span></p>`);
    const out = [...document.querySelectorAll(".answer")].pop();
    const r = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: $("#model").value, messages: history, max_tokens: 32 }) });
    if (!r.ok) { $("#msg").textContent = (await r.json()).error; return; }
    const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "", answer = "";
    for (;;) {
      const { value, done } = await reader.read(); if (done) break;
      buf += dec.decode(value, { stream: true });
      const parts = buf.split("\n\n"); buf = parts.pop();
      parts.forEach((p) => { if (p.startsWith("data: ")) { const e = JSON.parse(p.slice(6)); answer += e.text; out.textContent = answer; if (e.finish) out.dataset.finish = e.finish; } });
    }
    history.push({ role: "assistant", content: answer });
  };
  $("#cls").onclick = async () => {
    try { const d = await api("/api/classify", { model: $("#model").value, text: $("#ctext").value });
      $("#scores").innerHTML = `<p>label <b id="label">${esc(d.label)}</b></p>` + table(["label", "score"], Object.entries(d.scores).map(([k, v]) => [esc(k), fmt(v)])); }
    catch (e) { $("#msg").textContent = e.message; }
  };
}

const PAGES = { runs: pageRuns, run: pageRun, compare: pageCompare, new: pageNew, registry: pageRegistry, monitor: pageMonitor, playground: pagePlayground };
PAGES[app.dataset.page]().catch((e) => { app.innerHTML = `<p class="err">${esc(e.message)}</p>`; });
