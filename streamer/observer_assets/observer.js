// skygrade observer page: polls the JSON endpoints and updates the page in place.
// The server renders everything first (the page reads with JavaScript off); this script only
// keeps it current and makes the CCD drill-down instant. Every text from the dataset is set
// with textContent (never innerHTML): OBJECT comes from a FITS header typed by observers.
(function () {
  "use strict";
  const body = document.body;
  const night = body.dataset.night;
  const live = body.dataset.live === "1";
  const pinned = body.dataset.pinned || "";
  const showAll = body.dataset.all === "1";
  const pollMs = Math.max(500, parseInt(body.dataset.pollMs || "3000", 10));
  const colors = JSON.parse(body.dataset.colors || "{}");
  const CLASSES = ["GOOD", "B_SEEING", "BGP", "BT", "RBT"];
  const TABLE_ROWS = 50;
  let rev = body.dataset.rev || "";
  let shown = body.dataset.exposure || "";
  let exposure = null; // the /api/exposure document of the exposure shown
  let selected = null;

  function h(tag, attrs, ...children) {
    const ns = tag === "svg" || tag === "rect" || tag === "title" || tag === "g";
    const el = ns ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const num = (v, d) => (typeof v === "number" && isFinite(v) ? v.toFixed(d) : "-");
  const hms = (iso) => (iso ? new Date(iso).toISOString().slice(11, 19) : "-");
  const q = (params) => new URLSearchParams(params).toString();
  const shade = (c) => 0.3 + 0.7 * Math.min(Math.max(c || 0, 0), 1);

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  // ---------------------------------------------------------------- now

  function ago(s) {
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function tickAgo() {
    const el = document.getElementById("now-ago");
    if (el && el.dataset.t) el.textContent = ago(Math.max(0, Date.now() / 1000 - el.dataset.t));
  }

  function renderNow(d) {
    document.getElementById("now-night").textContent = d.night;
    document.getElementById("now-model").textContent = d.model_version || "-";
    const state = document.getElementById("now-state");
    state.textContent = d.state;
    state.className = "state-" + d.state.replace(/ /g, "-");
    document.getElementById("now-backlog").textContent = d.backlog === null ? "-" : d.backlog;
    const last = document.getElementById("now-last");
    last.replaceChildren();
    if (d.last_graded) {
      const t = new Date(d.last_graded.graded_at).getTime() / 1000;
      last.append(h("span", { id: "now-last-time" }, hms(d.last_graded.graded_at) + " UT"), " (",
        h("span", { id: "now-ago", "data-t": t.toFixed(3) }, ""), "), ",
        d.last_graded.exposure_id + " " + (d.last_graded.grade || ""));
      tickAgo();
    } else {
      last.append(h("span", { id: "now-last-time" }, "-"));
    }
    const alerts = document.getElementById("alerts");
    alerts.replaceChildren();
    for (const a of d.alerts || []) {
      alerts.append(h("li", { class: "alert " + String(a.level || "").toLowerCase() },
        h("b", {}, a.level), " " + a.rule + ": " + a.message));
    }
    if (!alerts.children.length) alerts.append(h("li", { class: "none" }, "no active alert"));
  }

  async function pollNow() {
    const d = await getJSON("/api/now");
    if (live && d.night !== night) { window.location.assign("/"); return; }
    renderNow(d);
  }

  // ---------------------------------------------------------------- exposure + CCDs

  function thumbAlt(ccd) { return "representative image of ccd" + String(ccd).padStart(2, "0"); }

  function renderDetail(c) {
    const box = document.getElementById("ccd-detail");
    box.replaceChildren();
    const name = "ccd" + String(c.ccd).padStart(2, "0");
    box.append(h("h3", {}, name + " ",
      h("span", { class: "grade", "data-grade": c.grade || "" }, c.grade || c.status)));
    box.append(c.thumbnail ? h("img", { class: "thumb", src: c.thumbnail, alt: thumbAlt(c.ccd) })
      : h("p", { class: "noimg" }, "no representative image"));
    const probs = h("table", { class: "probs" });
    for (const k of CLASSES) {
      const p = c["p_" + k];
      if (typeof p !== "number") continue;
      const bar = h("span", {});
      bar.style.width = Math.round(100 * p) + "%";
      bar.style.backgroundColor = colors[k];
      probs.append(h("tr", {}, h("th", {}, k), h("td", { class: "bar" }, bar),
        h("td", {}, p.toFixed(3))));
    }
    box.append(probs);
    const facts = h("dl", { class: "facts" });
    for (const [k, v] of [["status", c.status], ["sources", c.n_sources],
      ["median elongation", num(c.median_elongation, 2)],
      ["median ISO0", num(c.median_iso0, 1) + " px"],
      ["median background", num(c.median_background, 1) + " ADU"],
      ["reason", c.reason || "-"]]) {
      facts.append(h("dt", {}, k), h("dd", {}, v));
    }
    box.append(facts);
    const hits = h("table", { class: "hits", title: "SOM hits per cluster" });
    const list = c.hits || [];
    for (let i = 0; i < list.length; i += 5) {
      hits.append(h("tr", {}, ...list.slice(i, i + 5).map((x) => h("td", {}, x))));
    }
    box.append(hits);
  }

  function select(ccd) {
    if (!exposure) return;
    const c = exposure.ccds.find((x) => x.ccd === ccd);
    if (!c) return;
    selected = ccd;
    for (const el of document.querySelectorAll("#focal-plane .ccd")) {
      el.classList.toggle("selected", Number(el.dataset.ccd) === ccd);
    }
    renderDetail(c);
  }

  function renderExposure(d) {
    const e = d.exposure;
    document.getElementById("exposure-title").textContent =
      pinned ? "Exposure " + e.exposure_id : "Latest exposure";
    const summary = document.getElementById("exposure-summary");
    summary.replaceChildren();
    const grade = e.grade ? h("span", { class: "grade", "data-grade": e.grade }, e.grade)
      : h("span", { class: "grade q" }, e.status);
    summary.append(h("p", { class: "headline" }, grade, " ",
      h("span", { class: "conf" }, num(e.confidence, 2)), " ",
      h("span", { class: "reason" }, e.reason || "")));
    const facts = h("dl", { class: "facts" });
    for (const [k, v] of [["EXPNUM", e.exposure_id], ["OBJECT", e.object], ["FILTER", e.filter],
      ["EXPTIME", num(e.exptime, 0) + " s"], ["taken", hms(e.time) + " UT"],
      ["latency", num(e.latency_s, 1) + " s"],
      ["CCDs graded", (e.n_ccd_graded || 0) + " / " + (e.n_ccd || 0)],
      ["model", e.model_version]]) {
      facts.append(h("dt", {}, k), h("dd", { class: "f-" + k.split(" ")[0].toLowerCase() },
        v === null || v === undefined ? "" : v));
    }
    summary.append(facts);
    const fp = document.getElementById("focal-plane");
    fp.replaceChildren();
    fp.style.gridTemplateColumns = "repeat(" + d.layout.cols + ",var(--cell-w))";
    fp.dataset.rows = d.layout.rows;
    fp.dataset.cols = d.layout.cols;
    const byCcd = new Map(d.ccds.map((c) => [c.ccd, c]));
    for (let k = 0; k < d.layout.n_ccd; k++) {
      const c = byCcd.get(k);
      const status = c ? c.status : "missing";
      const conf = c && c.grade ? c["p_" + c.grade] : null;
      const label = (c && c.grade) || { quarantined: "Q", not_graded: "-" }[status] || "?";
      const row = c ? c.cell.row : Math.floor(k / d.layout.cols);
      const col = c ? c.cell.col : k % d.layout.cols;
      const a = h("a", {
        class: "ccd", id: "cell-" + k, "data-ccd": k, "data-grade": (c && c.grade) || "",
        "data-status": status,
        href: "/exposure?" + q({ night: night, id: e.exposure_id, ccd: k }) + "#ccd-detail",
        title: "ccd" + String(k).padStart(2, "0") + " " + ((c && c.grade) || status) + " " +
          num(conf, 2) + (c && c.reason ? " (" + c.reason + ")" : ""),
      }, h("span", { class: "n" }, String(k).padStart(2, "0")), h("span", { class: "g" }, label));
      a.style.gridRow = String(row + 1);
      a.style.gridColumn = String(col + 1);
      if (c && c.cell.color) a.style.backgroundColor = c.cell.color;
      fp.append(a);
    }
    if (selected !== null && byCcd.has(selected)) select(selected);
    else {
      selected = null;
      const box = document.getElementById("ccd-detail");
      box.replaceChildren(h("p", { class: "hint" },
        "select a CCD for its probabilities, hits and image"));
    }
  }

  async function loadExposure(id) {
    const d = await getJSON("/api/exposure?" + q({ night: night, id: id }));
    exposure = d;
    if (shown !== id) selected = null;
    shown = id;
    body.dataset.exposure = id;
    renderExposure(d);
  }

  document.getElementById("focal-plane")?.addEventListener("click", (ev) => {
    const cell = ev.target.closest(".ccd");
    if (!cell || !exposure) return; // before the first load the link works as without JS
    ev.preventDefault();
    select(Number(cell.dataset.ccd));
  });

  // ---------------------------------------------------------------- night

  function renderTimeline(d) {
    const svg = document.getElementById("timeline");
    const start = new Date(d.span[0]).getTime();
    const end = new Date(d.span[1]).getTime();
    const span = (end - start) || 1;
    const x0 = 40, width = 940, base = 100, height = 80;
    const marks = h("g", { id: "marks" });
    for (const e of d.exposures) {
      const t = e.time;
      if (!t) continue;
      const x = x0 + width * (new Date(t).getTime() - start) / span;
      const graded = e.status === "graded";
      const ht = graded ? Math.max(height * (e.confidence || 0), 4) : 6;
      const tip = e.exposure_id + " " + hms(t) + " UT " + (e.grade || e.status) +
        (graded ? " " + e.confidence.toFixed(2) : "");
      marks.append(h("rect", {
        class: graded ? "mark" : "mark q", "data-id": e.exposure_id, x: (x - 1.5).toFixed(1),
        y: (base - ht).toFixed(1), width: 3, height: ht.toFixed(1),
        fill: graded ? colors[e.grade] : "#888",
        "fill-opacity": graded ? shade(e.confidence).toFixed(2) : 1,
      }, h("title", {}, tip)));
    }
    svg.querySelector("#marks").replaceWith(marks);
  }

  function renderTable(d) {
    const tbody = document.querySelector("#exposures tbody");
    const before = new Set([...tbody.querySelectorAll("tr")].map((tr) => tr.dataset.id));
    const rows = d.exposures.slice().reverse();
    tbody.replaceChildren();
    for (const e of showAll ? rows : rows.slice(0, TABLE_ROWS)) {
      const link = h("a", { href: "/exposure?" + q({ night: night, id: e.exposure_id }) },
        e.exposure_id);
      tbody.append(h("tr", {
        id: "exp-" + e.exposure_id, "data-id": e.exposure_id,
        class: before.has(e.exposure_id) ? null : "new",
      }, h("td", {}, hms(e.time)), h("td", {}, link),
      h("td", {}, e.object || ""), h("td", {}, e.filter || ""),
      h("td", { class: "num" }, num(e.exptime, 0)),
      h("td", {}, h("span", { class: "grade", "data-grade": e.grade || "" }, e.grade || e.status)),
      h("td", { class: "num" }, num(e.confidence, 2)),
      h("td", { class: "num" }, num(e.latency_s, 1)),
      h("td", { class: "reason" }, e.reason || "")));
    }
  }

  function renderUsable(s) {
    const p = document.getElementById("usable");
    const usable = s.usable_fraction === null ? "-" : Math.round(100 * s.usable_fraction) + "%";
    p.replaceChildren("usable (GOOD) so far: ", h("b", {}, usable),
      " of " + s.graded + " graded; " + s.n + " exposure(s), " + s.quarantined + " quarantined");
  }

  async function pollNight() {
    const d = await getJSON("/api/night?" + q({ date: night, rev: rev }));
    if (d.unchanged) return;
    rev = d.rev;
    body.dataset.rev = rev;
    renderUsable(d.summary);
    renderTimeline(d);
    renderTable(d);
    const latest = d.exposures.length ? d.exposures[d.exposures.length - 1] : null;
    const target = pinned || (latest && latest.exposure_id);
    if (target) await loadExposure(target);
  }

  // ---------------------------------------------------------------- start

  function every(ms, fn) {
    let running = false;
    const run = async () => {
      if (running) return;
      running = true;
      try { await fn(); } catch (err) { console.warn(err); } finally { running = false; }
    };
    setInterval(run, ms);
    return run;
  }
  setInterval(tickAgo, 1000);
  every(pollMs, pollNow);
  const night0 = every(pollMs, pollNight);
  if (shown) {
    loadExposure(shown).then(() => {
      const sel = /[?&]ccd=(\d+)/.exec(window.location.search);
      if (sel) select(Number(sel[1]));
    }).catch((err) => console.warn(err));
  }
  night0();
  window.skygradeObserver = { pollNight: night0, version: 1 };
})();
