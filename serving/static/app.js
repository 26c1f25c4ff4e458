// The relevance workbench: the same HTTP API every client uses (no admin token, ever).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const SENIORITY = ["entry", "mid", "senior", "lead", "director"];
const state = { tab: "search", members: new Map(), last: null };

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`the server did not answer (${err.message})`);
  }
  let doc = null;
  try { doc = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    let msg = doc && (doc.message || doc.detail);
    if (msg && typeof msg !== "string") msg = JSON.stringify(msg);
    const err = new Error(`HTTP ${response.status}: ${msg || response.statusText}`);
    err.status = response.status;
    throw err;
  }
  return doc;
}

function showError(messages) {
  const box = $("#error");
  box.textContent = messages.join("\n");
  box.hidden = messages.length === 0;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function km(lat1, lon1, lat2, lon2) {
  const rad = (d) => (d * Math.PI) / 180;
  const a = Math.sin(rad(lat2 - lat1) / 2) ** 2
    + Math.cos(rad(lat1)) * Math.cos(rad(lat2)) * Math.sin(rad(lon2 - lon1) / 2) ** 2;
  return 2 * 6371.0088 * Math.asin(Math.sqrt(Math.min(1, a)));
}

async function init() {
  const box = $("#seniority");
  for (const s of SENIORITY) {
    box.append(el("label", {}, el("input", { type: "checkbox", value: s, name: "seniority" }), s));
  }
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
    state.tab = b.dataset.tab;
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === b));
    $("#query").disabled = state.tab === "feed";
    $("#go").textContent = state.tab === "feed" ? "Recommend" : "Search";
    document.querySelectorAll(".jobs").forEach((n) => { n.hidden = state.tab === "kb"; });
    document.querySelectorAll(".kb").forEach((n) => { n.hidden = state.tab !== "kb"; });
  }));
  $("#controls").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });
  const errors = [];
  try {
    for (const m of await api("GET", "/v1/sample-members?n=40")) {
      state.members.set(String(m.member_id), m);
      const label = `${m.member_id} · ${m.headline || "no headline"} · ${m.city || "?"}`;
      $("#member").append(el("option", { value: String(m.member_id) }, label));
    }
  } catch (err) { errors.push(`members: ${err.message}`); }
  try {
    const rel = await api("GET", "/v1/releases");
    for (const r of rel.serving) {
      const label = `${r.release} (${r.role})`;
      $("#release-a").append(el("option", { value: r.release }, label));
      $("#release-b").append(el("option", { value: r.release }, label));
    }
    $("#served").textContent = `live: ${rel.live}`
      + (rel.experiment ? ` · experiment ${rel.experiment.name}` : "");
  } catch (err) { errors.push(`releases: ${err.message}`); }
  try {
    for (const c of await api("GET", "/v1/corpora")) {
      const label = `${c.corpus}: ${c.description}` + (c.live ? "" : " (not built)");
      $("#corpus").append(el("option", { value: c.corpus }, label));
    }
  } catch (err) { errors.push(`corpora: ${err.message}`); }
  showError(errors);
}

async function searchCorpus() {
  const body = { query: $("#query").value.trim(), k: Number($("#k").value || 10) };
  body.retrieval = $("#retrieval").value || "hybrid";
  let doc;
  try {
    if (!body.query) throw new Error("query: type a question");
    doc = await api("POST", `/v1/corpora/${encodeURIComponent($("#corpus").value)}/search`, body);
  } catch (err) { showError([err.message]); return; }
  const node = $("#column-template").content.firstElementChild.cloneNode(true);
  node.dataset.release = doc.release;
  $(".title", node).textContent = `${doc.corpus} · ${doc.release}`;
  $(".meta", node).textContent = `${doc.retrieval} · ${doc.took_ms.toFixed(1)} ms · ${doc.results.length} articles`;
  $(".plan", node).hidden = true;
  doc.results.forEach((a, i) => {
    const li = el("li", { "data-article-id": String(a.article_id) });
    li.append(el("div", { class: "hit-head" }, el("span", { class: "rank" }, `${i + 1}.`),
      el("span", { class: "hit-title" }, a.title), el("span", { class: "score" }, a.score.toFixed(4))));
    li.append(el("div", { class: "hit-meta article-text" }, a.text || ""));
    $(".results", node).append(li);
  });
  $("#columns").append(node);
}

async function buildFilter() {
  const leaves = [];
  const picked = [...document.querySelectorAll("#seniority input:checked")].map((i) => i.value);
  if (picked.length) leaves.push({ term: { seniority: picked } });
  if ($("#remote").value) leaves.push({ term: { remote: [$("#remote").value === "true"] } });
  if ($("#employment").value) leaves.push({ term: { employment_type: [$("#employment").value] } });
  const days = $("#days").value.trim();
  if (days) {
    const since = new Date(Date.now() - Number(days) * 86400e3);
    leaves.push({ range: { posted_at: { gte: since.toISOString().slice(0, 19) } } });
  }
  const radius = $("#km").value.trim();
  const place = $("#place").value.trim();
  if (radius || place) {
    if (!radius || !place) throw new Error("within: give both the km and a city");
    const found = await api("GET", `/v1/places?name=${encodeURIComponent(place)}`);
    leaves.push({ geo_radius: { lat: found.lat, lon: found.lon, km: Number(radius) } });
    state.place = found;
  }
  if (!leaves.length) return null;
  return leaves.length === 1 ? leaves[0] : { and: leaves };
}

function request(release, filter) {
  const member = $("#member").value;
  const k = Number($("#k").value || 10);
  const cap = $("#cap").value.trim();
  if (state.tab === "feed") {
    if (!member) throw new Error("member: pick a member for recommendations");
    const q = new URLSearchParams({ k: String(k), explain: "true" });
    if (cap) q.set("max_per_company", cap);
    if (release) q.set("release", release);
    return () => api("GET", `/v1/members/${member}/recommendations?${q}`);
  }
  const body = { k, explain: true };
  const query = $("#query").value.trim();
  if (query) body.query = query;
  if (member) body.member_id = Number(member);
  if (filter) body.filter = filter;
  if ($("#retrieval").value) body.retrieval = $("#retrieval").value;
  if (cap) body.max_per_company = Number(cap);
  if (release) body.release = release;
  return () => api("POST", "/v1/search", body);
}

async function run() {
  showError([]);
  $("#columns").replaceChildren();
  if (state.tab === "kb") { await searchCorpus(); return; }
  let filter = null;
  const releases = [$("#release-a").value];
  if ($("#release-b").value) releases.push($("#release-b").value);
  let calls;
  try {
    filter = state.tab === "search" ? await buildFilter() : null;
    calls = releases.map((r) => request(r, filter));
  } catch (err) { showError([err.message]); return; }
  const answers = await Promise.allSettled(calls.map((c) => c()));
  const errors = answers.filter((a) => a.status === "rejected").map((a) => a.reason.message);
  showError(errors);
  const docs = answers.map((a) => (a.status === "fulfilled" ? a.value : null));
  state.last = { query: state.tab === "feed" ? null : $("#query").value.trim() || null,
                 member: $("#member").value ? Number($("#member").value) : null };
  const marks = await judged();
  docs.forEach((doc, i) => {
    if (doc) $("#columns").append(column(doc, i === 1 ? docs[0] : null, marks));
  });
  await ndcgLine();
}

function column(doc, baseline, marks) {
  const node = $("#column-template").content.firstElementChild.cloneNode(true);
  node.dataset.release = doc.release;
  $(".title", node).textContent = doc.release + (doc.arm ? ` · arm ${doc.arm} of ${doc.experiment}` : "");
  $(".meta", node).textContent = `${doc.retrieval || "no retrieval"} · model ${doc.model_version}`
    + ` · ${doc.took_ms.toFixed(1)} ms · ${doc.results.length} results`;
  if (doc.corrected_query) {
    const p = $(".corrected", node);
    p.hidden = false;
    p.textContent = `showing results for: ${doc.corrected_query}`;
  }
  if (doc.notice) { $(".notice", node).hidden = false; $(".notice", node).textContent = doc.notice; }
  const plan = doc.plan || {};
  $(".plan pre", node).textContent = JSON.stringify(
    { funnel: plan.funnel, stages_ms: plan.stages_ms, ranker: plan.ranker, strategy: plan.strategy }, null, 2);
  const before = new Map((baseline ? baseline.results : []).map((h, i) => [h.job_id, i]));
  const member = state.members.get($("#member").value);
  doc.results.forEach((h, i) => $(".results", node).append(hit(h, i, baseline ? before : null, member, marks)));
  return node;
}

function hit(h, i, before, member, marks) {
  const li = el("li", { "data-job-id": String(h.job_id) });
  if (h.lat != null) { li.dataset.lat = String(h.lat); li.dataset.lon = String(h.lon); }
  const shift = el("span", { class: "shift" });
  if (before) {
    if (!before.has(h.job_id)) { shift.textContent = "new"; shift.classList.add("new"); }
    else {
      const moved = before.get(h.job_id) - i;
      shift.textContent = moved > 0 ? `▲${moved}` : moved < 0 ? `▼${-moved}` : "=";
      shift.classList.add(moved > 0 ? "up" : moved < 0 ? "down" : "same");
    }
  }
  li.append(el("div", { class: "hit-head" }, el("span", { class: "rank" }, `${i + 1}.`),
    el("span", { class: "hit-title" }, h.title), shift, el("span", { class: "score" }, h.score.toFixed(4))));
  const parts = [h.company, [h.city, h.country].filter(Boolean).join(", "), h.seniority,
    h.employment_type, h.remote ? "remote" : null];
  if (member && member.lat != null && h.lat != null) {
    parts.push(`${Math.round(km(member.lat, member.lon, h.lat, h.lon))} km from ${member.city}`);
  }
  if (h.posted_at) parts.push(`posted ${h.posted_at.slice(0, 10)}`);
  li.append(el("div", { class: "hit-meta" }, parts.filter(Boolean).join(" · ")));
  li.append(judgeButtons(h.job_id, marks.get(h.job_id)));
  if (h.explain) li.append(why(h.explain));
  return li;
}

function judgeButtons(jobId, mark) {
  const yes = el("button", { type: "button", class: "yes", title: "relevant" }, "✓ relevant");
  const no = el("button", { type: "button", class: "no", title: "not relevant" }, "✗ not");
  const paint = (v) => { yes.classList.toggle("on", v === true); no.classList.toggle("on", v === false); };
  paint(mark);
  const save = async (relevant) => {
    try {
      await api("PUT", `/v1/judgments/${encodeURIComponent(setName())}`,
        { query: state.last.query, member_id: state.last.member, job_id: jobId, relevant });
      document.querySelectorAll(`li[data-job-id="${jobId}"]`).forEach((li) => {
        li.querySelector(".yes").classList.toggle("on", relevant);
        li.querySelector(".no").classList.toggle("on", !relevant);
      });
      paint(relevant);
      await ndcgLine();
    } catch (err) { showError([err.message]); }
  };
  yes.addEventListener("click", () => save(true));
  no.addEventListener("click", () => save(false));
  return el("span", { class: "judge" }, yes, no);
}

function why(ex) {
  const box = el("details", { class: "why" }, el("summary", {}, "why"));
  const table = el("table");
  const row = (k, v, bar) => table.append(el("tr", {}, el("td", {}, k), el("td", {}, v), el("td", {}, bar || "")));
  const r = ex.retrieval || {};
  row("retrieval rank", String(r.rank ?? ""));
  for (const key of ["score", "ebr_cosine", "bm25", "term_coverage"]) {
    if (r[key] != null) row(key, Number(r[key]).toFixed(4));
  }
  if (ex.ranker) {
    row("ranker score", Number(ex.ranker.score).toFixed(4));
    const parts = Object.entries(ex.ranker.contributions || {}).filter(([, v]) => v != null)
      .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 8);
    for (const [name, v] of parts) {
      const bar = el("span", { class: `bar${v < 0 ? " neg" : ""}` });
      bar.style.width = `${Math.min(120, Math.abs(v) * 60)}px`;
      row(name, (v >= 0 ? "+" : "") + v.toFixed(3), bar);
    }
  }
  if (ex.crowding) {
    row("crowding", `ranked ${ex.crowding.ranked_at} → shown ${ex.crowding.position}`
      + (ex.crowding.promoted_by ? `, up ${ex.crowding.promoted_by}` : ""));
  }
  box.append(table);
  return box;
}

function setName() { return $("#set").value.trim() || "default"; }

async function judged() {
  const marks = new Map();
  try {
    const doc = await api("GET", `/v1/judgments/${encodeURIComponent(setName())}`);
    const q = state.last.query ? state.last.query.toLowerCase().split(/\s+/).join(" ") : null;
    for (const j of doc.judgments) {
      if (j.query === q && j.member_id === state.last.member) marks.set(j.job_id, j.relevant);
    }
  } catch (err) { showError([err.message]); }
  return marks;
}

async function ndcgLine() {
  const line = $("#ndcg");
  try {
    const doc = await api("GET", `/v1/judgments/${encodeURIComponent(setName())}/report`);
    const parts = Object.entries(doc.releases).map(([rid, s]) => {
      const v = s["ndcg@10"] == null ? "n/a" : s["ndcg@10"].toFixed(3);
      return `${rid} ${v} (judged ${Math.round(100 * (s["judged@10"] || 0))}% of top 10)`;
    });
    line.textContent = `NDCG@10 on set "${doc.set}" (${doc.queries} queries, ${doc.judgments} judgments): ${parts.join(" · ")}`;
  } catch (err) {
    line.textContent = err.status === 409 ? `set "${setName()}": no judgments yet` : `NDCG@10: ${err.message}`;
  }
}

init();
