// skygrade observer page: keeps the server-rendered page current and the CCD drill-down in place.
// The server renders every piece of HTML with its escaping templates (the page reads with
// JavaScript off); this script only fetches those same fragments while it polls and swaps them
// in. It builds no markup and holds no copy of the classes or their colours: the fragments are
// parsed with DOMParser (scripts in them never run) and the page's CSP allows this file only.
(function () {
  "use strict";
  const body = document.body;
  const night = body.dataset.night;
  const live = body.dataset.live === "1";
  const pinned = body.dataset.pinned || "";
  const showAll = body.dataset.all === "1";
  const pollMs = Math.max(500, parseInt(body.dataset.pollMs || "3000", 10));
  let rev = body.dataset.rev || "";
  let shown = body.dataset.exposure || "";
  let selected = body.dataset.ccd ? Number(body.dataset.ccd) : null;
  const q = (params) => new URLSearchParams(params).toString();

  async function fetchOk(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r;
  }

  // Replace the elements with these ids by the ones of the server's fragment at url.
  async function swap(url, ...ids) {
    const text = await (await fetchOk(url)).text();
    const doc = new DOMParser().parseFromString(text, "text/html");
    for (const id of ids) {
      const fresh = doc.getElementById(id);
      const old = document.getElementById(id);
      if (fresh && old) old.replaceWith(document.adoptNode(fresh));
    }
    tick();
  }

  // ---------------------------------------------------------------- clocks

  function duration(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function tick() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll(".ago[data-t]")) {
      el.textContent = duration(Math.max(0, now - el.dataset.t)) + " ago";
    }
    for (const el of document.querySelectorAll(".waited[data-t]")) {
      el.textContent = duration(Math.max(0, now - el.dataset.t));
    }
  }

  // ---------------------------------------------------------------- now + waiting

  async function pollNow() {
    await swap("/fragment/now?" + q({ night: night }), "now", "waiting");
    const now = document.getElementById("now");
    if (live && now && now.dataset.night !== night) window.location.assign("/");
  }

  // ---------------------------------------------------------------- exposure + CCDs

  // The address bar follows the selected CCD (?ccd=K on the page shown), so it can be shared.
  function followUrl() {
    const u = new URL(window.location.href);
    if (selected === null) u.searchParams.delete("ccd");
    else u.searchParams.set("ccd", String(selected));
    u.hash = "";
    window.history.replaceState(null, "", u.pathname + u.search);
  }

  async function select(ccd) {
    if (!shown) return;
    await swap("/fragment/ccd?" + q({ night: night, id: shown, ccd: ccd }), "ccd-detail");
    selected = ccd;
    body.dataset.ccd = String(ccd);
    for (const el of document.querySelectorAll("#focal-plane .ccd")) {
      el.classList.toggle("selected", Number(el.dataset.ccd) === ccd);
    }
    followUrl();
  }

  async function loadExposure(id) {
    const params = { night: night, id: id };
    if (selected !== null) params.ccd = selected;
    if (pinned) params.pinned = 1;
    await swap("/fragment/exposure?" + q(params), "exposure");
    shown = id;
    body.dataset.exposure = id;
  }

  document.addEventListener("click", (ev) => {
    const cell = ev.target.closest && ev.target.closest("#focal-plane .ccd");
    if (!cell || !shown) return; // elsewhere, links work as without JavaScript
    ev.preventDefault();
    select(Number(cell.dataset.ccd)).catch((err) => {
      console.warn(err);
      window.location.assign(cell.href); // the server page says what happened
    });
  });

  // ---------------------------------------------------------------- night

  // The night panel, when it changed (the server answers <p id="unchanged"> to the same rev);
  // then the exposure panel of the latest graded exposure (or of the pinned one).
  async function pollNight() {
    const params = { date: night, rev: rev };
    if (showAll) params.all = 1;
    const text = await (await fetchOk("/fragment/night?" + q(params))).text();
    const fresh = new DOMParser().parseFromString(text, "text/html").getElementById("tonight");
    if (!fresh) return;
    const before = new Set([...document.querySelectorAll("#exposures tbody tr")]
      .map((tr) => tr.dataset.id));
    document.getElementById("tonight").replaceWith(document.adoptNode(fresh));
    for (const tr of document.querySelectorAll("#exposures tbody tr")) {
      if (before.size && !before.has(tr.dataset.id)) tr.classList.add("new");
    }
    tick();
    rev = fresh.dataset.rev;
    body.dataset.rev = rev;
    const target = pinned || fresh.dataset.latest;
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
  setInterval(tick, 1000);
  every(pollMs, pollNow);
  const night0 = every(pollMs, pollNight);
  night0();
  window.skygradeObserver = { pollNight: night0, version: 2 };
})();
