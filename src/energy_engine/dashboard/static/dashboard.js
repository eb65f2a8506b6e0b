// The operator dashboard: reads the engine's API with the operator's key and renders the
// fleet and one vehicle, polling for changes. Plain JavaScript and hand-written SVG on
// purpose: a few hundred lines do the job, with no build step and nothing fetched from a CDN.
"use strict";

(() => {
  const KEY_STORE = "energy-engine.key";
  const HEALTHY_LINE = 0.85; // the engine's default ENERGY_HEALTHY_EFFICIENCY
  const HEALTH = ["healthy", "warning", "critical", "anomaly", "insufficient_data", "unknown"];
  const HEALTH_TEXT = {
    healthy: "healthy", warning: "warning", critical: "critical", anomaly: "anomaly",
    insufficient_data: "too little data", unknown: "no meter data",
  };
  const params = new URLSearchParams(location.search);
  // Seconds between refreshes; ?poll=N changes it (at least one second).
  const POLL_MS = Math.max(1, Number(params.get("poll")) || 5) * 1000;
  // The energy history changes once a reading lands in a new hour: refreshed less often.
  const SERIES_EVERY = 6;

  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem(KEY_STORE),
    sort: "efficiency",
    order: "asc",
    health: new Set(),
    limit: 50,
    cursors: [null], // the cursor of each page seen, for "previous"
    page: 0,
    windowHours: 24,
    polls: 0,
    timer: null,
    busy: false, // a refresh is in flight: a poll waits for the next tick
    generation: 0,
  };

  // ---- API ---------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    let response;
    try {
      response = await fetch(path, { headers });
    } catch (err) {
      throw new ApiError(0, { message: "the engine cannot be reached" });
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function query(values) {
    const q = new URLSearchParams();
    for (const [name, value] of Object.entries(values)) {
      for (const one of [].concat(value)) if (one !== null && one !== undefined) q.append(name, one);
    }
    return q.toString();
  }

  // ---- formatting --------------------------------------------------------------------------
  const num = (v, digits = 1) =>
    v === null || v === undefined ? "–" : v.toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" }) : "–");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function badge(health) {
    return el("span", { class: `badge ${health}`, "data-health": health }, HEALTH_TEXT[health] || health);
  }

  function stateRow(tbody, columns, text) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: String(columns), class: "state" }, text)));
  }

  function showError(err) {
    const box = $("error");
    if (!err) {
      box.hidden = true;
      return;
    }
    box.textContent = err.status === 0 ? `${err.message}; retrying…` : `Error: ${err.message}`;
    box.hidden = false;
  }

  // ---- key ---------------------------------------------------------------------------------
  function askForKey(message) {
    stopPolling();
    $("overview").hidden = true;
    $("vehicle").hidden = true;
    $("key-form").hidden = false;
    $("forget-key").hidden = true;
    showError(message ? { status: 401, message } : null);
    $("key").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    $("key-form").hidden = true;
    $("key").value = "";
    route();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    askForKey();
  });

  // ---- overview ----------------------------------------------------------------------------
  function renderHealthFilter(counts) {
    const box = $("health-filter");
    box.replaceChildren(
      ...HEALTH.map((health) =>
        el(
          "button",
          {
            type: "button",
            class: `chip ${health}`,
            "data-health": health,
            "aria-pressed": String(state.health.has(health)),
            onclick: () => {
              if (state.health.has(health)) state.health.delete(health);
              else state.health.add(health);
              resetPages();
              refresh();
            },
          },
          `${HEALTH_TEXT[health]} `,
          el("span", { class: "count" }, counts ? String(counts[health] ?? 0) : "…"),
        ),
      ),
    );
  }

  function resetPages() {
    state.cursors = [null];
    state.page = 0;
  }

  function renderFleetStatus(fleet) {
    $("vehicles-online").textContent = fleet.vehiclesOnline.toLocaleString("en");
    $("vehicles-known").textContent = `of ${fleet.vehicles.toLocaleString("en")}`;
    $("meters-online").textContent = fleet.metersOnline.toLocaleString("en");
    $("meters-known").textContent = `of ${fleet.meters.toLocaleString("en")}`;
    $("charging").textContent = fleet.vehiclesCharging.toLocaleString("en");
    $("avg-soc").textContent = fleet.avgSocOnline === null ? "–" : `${num(fleet.avgSocOnline)} %`;
    // Stale: known but not online (the same cut as the fleet status's own list).
    const stale = fleet.vehicles - fleet.vehiclesOnline + (fleet.meters - fleet.metersOnline);
    $("stale-count").textContent = stale.toLocaleString("en");
    $("stale-list").textContent = fleet.stale.length
      ? `stalest: ${fleet.stale.map((d) => d.deviceId).join(", ")}${stale > fleet.stale.length ? ", …" : ""}`
      : "";
  }

  function renderFleetReport(report, statuses) {
    const totals = report.totals;
    $("fleet-ac").textContent = `${num(totals.acConsumedKwh)} kWh`;
    $("fleet-dc").textContent = `${num(totals.dcDeliveredKwh)} kWh`;
    $("fleet-loss").textContent = `${num(totals.lossKwh)} kWh`;
    $("fleet-efficiency").textContent = pct(totals.efficiency);
    $("window").textContent = `· ${when(report.from)} – ${when(report.to)}`;
    renderHealthFilter(totals.health);
    for (const button of document.querySelectorAll("button.sort")) {
      const active = button.dataset.sort === state.sort;
      button.closest("th").setAttribute("aria-sort", active ? (state.order === "asc" ? "ascending" : "descending") : "none");
    }

    const rows = $("vehicle-rows");
    if (!report.vehicles.length) {
      stateRow(rows, 8, totals.vehicles ? "No vehicle matches the filter." : "No vehicle has reported yet.");
    } else {
      const byId = new Map(statuses.map((s) => [s.vehicleId, s]));
      rows.replaceChildren(
        ...report.vehicles.map((v) => {
          const s = byId.get(v.vehicleId);
          const href = `#/vehicles/${encodeURIComponent(v.vehicleId)}`;
          return el(
            "tr",
            { "data-vehicle": v.vehicleId },
            el("td", {}, el("a", { href }, v.vehicleId)),
            el("td", { class: "num" }, s ? `${num(s.soc)} %` : "–"),
            el("td", {}, s ? (s.charging ? "charging" : "no") : "–"),
            el("td", {}, s ? (s.online ? "online" : "offline") : "never"),
            el("td", { class: "num" }, pct(v.efficiency)),
            el("td", { class: "num" }, num(v.lossKwh, 2)),
            el("td", { class: "num" }, num(v.dcDeliveredKwh, 2)),
            el("td", {}, badge(v.health)),
          );
        }),
      );
    }
    if (report.nextCursor) state.cursors[state.page + 1] = report.nextCursor;
    else state.cursors.length = state.page + 1;
    const pages = Math.max(1, Math.ceil(report.matching / state.limit));
    $("page-info").textContent = `page ${state.page + 1} of ${pages} · ${report.matching.toLocaleString("en")} vehicles`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = !report.nextCursor;
  }

  async function loadOverview(generation) {
    const fleetQuery = query({
      sort: state.sort,
      order: state.order,
      limit: state.limit,
      health: [...state.health],
      cursor: state.cursors[state.page],
    });
    // The live counts answer in a fraction of the fleet ranking's time: shown as they come.
    const fleet = api("/v1/fleet/status?limit=3").then((answer) => {
      if (generation === state.generation) renderFleetStatus(answer);
      return answer;
    });
    const [report] = await Promise.all([api(`/v1/analytics/fleet?${fleetQuery}`), fleet]);
    const ids = report.vehicles.map((v) => v.vehicleId);
    const statuses = ids.length ? (await api(`/v1/vehicles/status?${query({ vehicleId: ids })}`)).vehicles : [];
    return () => renderFleetReport(report, statuses);
  }

  for (const button of document.querySelectorAll("button.sort")) {
    button.addEventListener("click", () => {
      if (state.sort === button.dataset.sort) state.order = state.order === "asc" ? "desc" : "asc";
      else {
        state.sort = button.dataset.sort;
        state.order = "asc";
      }
      resetPages();
      refresh();
    });
  }
  $("prev").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    refresh();
  });
  $("next").addEventListener("click", () => {
    if (state.cursors[state.page + 1]) {
      state.page += 1;
      refresh();
    }
  });
  $("page-size").addEventListener("change", (event) => {
    state.limit = Number(event.target.value);
    resetPages();
    refresh();
  });

  // ---- charts ------------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const W = 640, H = 220, PAD = { l: 50, r: 14, t: 10, b: 26 };

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function ticks(lo, hi, count) {
    const step = (hi - lo) / count;
    return Array.from({ length: count + 1 }, (_, i) => lo + i * step);
  }

  // A time chart of `series` ({name, cls, values: [y or null per point], band?: [lo, hi]}),
  // over the points' start times; `line` draws a dashed reference value.
  function chart(container, times, series, { line = null, yMin = null, yMax = null, digits = 1 } = {}) {
    const values = series.flatMap((s) => s.values.concat(s.band ? s.band.flat() : [])).filter((v) => v !== null);
    if (!values.length) {
      container.replaceChildren(el("p", { class: "state" }, "No data in this window."));
      return;
    }
    let lo = yMin ?? Math.min(...values, line ?? Infinity);
    let hi = yMax ?? Math.max(...values, line ?? -Infinity);
    if (hi === lo) { hi += 1; lo -= yMin === null ? 1 : 0; }
    // A margin on the free ends, so no line runs along the frame.
    const margin = (hi - lo) * 0.08;
    if (yMin === null) lo -= margin;
    if (yMax === null) hi += margin;
    const t0 = times[0], t1 = times[times.length - 1] + 3600e3;
    const x = (t) => PAD.l + ((t - t0) / (t1 - t0)) * (W - PAD.l - PAD.r);
    const y = (v) => PAD.t + (1 - (v - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": series.map((s) => s.name).join(", ") });
    for (const v of ticks(lo, hi, 4)) {
      svg.append(svgEl("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), class: "grid" }));
      const label = svgEl("text", { x: PAD.l - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" });
      label.textContent = v.toFixed(digits);
      svg.append(label);
    }
    const span = t1 - t0;
    ticks(t0, t1, 4).forEach((t, i) => {
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      const label = svgEl("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": anchor });
      const d = new Date(t);
      label.textContent = span > 2 * 86400e3 ? d.toLocaleDateString("en-GB", { day: "numeric", month: "short" }) : d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
      svg.append(label);
    });
    if (line !== null) svg.append(svgEl("line", { x1: PAD.l, x2: W - PAD.r, y1: y(line), y2: y(line), class: "reference" }));
    const mid = (i) => x(times[i] + 1800e3);
    for (const s of series) {
      if (s.band) {
        // One polygon per run of points with both ends known.
        for (const run of runs(s.band.map(([a, b]) => (a === null || b === null ? null : [a, b])))) {
          const upper = run.map((i) => `${mid(i)},${y(s.band[i][1])}`);
          const lower = run.reverse().map((i) => `${mid(i)},${y(s.band[i][0])}`);
          svg.append(svgEl("polygon", { points: upper.concat(lower).join(" "), class: `band ${s.cls}` }));
        }
      }
      for (const run of runs(s.values)) {
        if (run.length === 1) svg.append(svgEl("circle", { cx: mid(run[0]), cy: y(s.values[run[0]]), r: 2, class: `dot ${s.cls}` }));
        else svg.append(svgEl("polyline", { points: run.map((i) => `${mid(i)},${y(s.values[i])}`).join(" "), class: `series ${s.cls}` }));
      }
    }
    const legend = el("div", { class: "legend" }, ...series.map((s) => el("span", { class: `key ${s.cls}` }, s.name)));
    if (line !== null) legend.append(el("span", { class: "key reference" }, `${line}`));
    container.replaceChildren(svg, legend);
  }

  // Indices of consecutive non-null values, one array per run.
  function runs(values) {
    const out = [];
    let current = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        if (current.length) out.push(current);
        current = [];
      } else current.push(i);
    });
    if (current.length) out.push(current);
    return out;
  }

  // ---- vehicle page -----------------------------------------------------------------------
  function renderVehicleStatus(id, status) {
    if (!status) {
      for (const field of ["v-soc", "v-temp", "v-power", "v-state", "v-seen"]) $(field).textContent = "–";
      $("v-state").textContent = "no readings yet";
      return;
    }
    $("v-soc").textContent = `${num(status.soc)} %`;
    $("v-temp").textContent = `${num(status.batteryTemp)} °C`;
    $("v-power").textContent = status.powerKw === null ? "–" : `${num(status.powerKw, 2)} kW`;
    $("v-state").textContent = `${status.online ? "online" : "offline"}${status.charging ? " · charging" : ""}`;
    $("v-seen").textContent = when(status.timestamp);
    $("v-seen").dataset.timestamp = status.timestamp;
    $("v-meter").textContent = status.meterId || "none";
  }

  function renderSeries(report, series) {
    const summary = $("v-summary");
    summary.replaceChildren(
      badge(report.health),
      ` AC ${num(report.acConsumedKwh, 2)} kWh · DC ${num(report.dcDeliveredKwh, 2)} kWh · loss ${num(report.lossKwh, 2)} kWh · efficiency ${pct(report.efficiency)}`,
    );
    const points = series.points;
    const times = points.map((p) => Date.parse(p.from));
    if (!points.length) {
      for (const id of ["chart-energy", "chart-efficiency", "chart-soc", "chart-temp"]) $(id).replaceChildren(el("p", { class: "state" }, "No data in this window."));
      return;
    }
    chart($("chart-energy"), times, [
      { name: "AC consumed", cls: "ac", values: points.map((p) => p.acConsumedKwh) },
      { name: "DC delivered", cls: "dc", values: points.map((p) => p.dcDeliveredKwh) },
    ], { yMin: 0, digits: 2 });
    chart($("chart-efficiency"), times, [
      { name: "efficiency", cls: "eff", values: points.map((p) => p.efficiency) },
    ], { line: HEALTHY_LINE, digits: 2 });
    chart($("chart-soc"), times, [
      { name: "SoC (highest)", cls: "soc", values: points.map((p) => p.socMax), band: points.map((p) => [p.socMin, p.socMax]) },
    ], { yMin: 0, yMax: 100, digits: 0 });
    chart($("chart-temp"), times, [
      { name: "battery temperature", cls: "temp", values: points.map((p) => p.avgBatteryTemp) },
    ], { digits: 1 });
  }

  function renderAssignments(assignments) {
    const rows = $("assignment-rows");
    if (!assignments.length) {
      stateRow(rows, 3, "Never assigned to a meter.");
      return;
    }
    rows.replaceChildren(
      ...[...assignments].reverse().map((a) =>
        el("tr", {}, el("td", {}, a.meterId), el("td", {}, when(a.validFrom)), el("td", {}, a.validTo ? when(a.validTo) : "open")),
      ),
    );
  }

  async function loadVehicle(id, withHistory) {
    const path = encodeURIComponent(id);
    const status = api(`/v1/vehicles/${path}/status`).catch((err) => {
      if (err.status === 404) return null; // assigned but never reported
      throw err;
    });
    if (!withHistory) {
      const now = await status;
      return () => renderVehicleStatus(id, now);
    }
    const to = new Date();
    const from = new Date(to.getTime() - state.windowHours * 3600e3).toISOString();
    const window = query({ from, to: to.toISOString() });
    const [now, report, series, assignments] = await Promise.all([
      status,
      api(`/v1/analytics/performance/${path}?${window}`),
      api(`/v1/analytics/performance/${path}/series?${window}&step=1h`),
      api(`/v1/vehicles/${path}/assignments`),
    ]);
    return () => {
      renderVehicleStatus(id, now);
      renderSeries(report, series);
      renderAssignments(assignments);
    };
  }

  for (const button of document.querySelectorAll("#windows button")) {
    button.addEventListener("click", () => {
      state.windowHours = Number(button.dataset.window);
      for (const other of document.querySelectorAll("#windows button")) other.setAttribute("aria-pressed", String(other === button));
      state.polls = 0;
      refresh();
    });
  }

  // ---- routing and polling ---------------------------------------------------------------
  function current() {
    const match = location.hash.match(/^#\/vehicles\/(.+)$/);
    return match ? { view: "vehicle", id: decodeURIComponent(match[1]) } : { view: "overview" };
  }

  // Loads and renders the current view. A later call supersedes an earlier one still in
  // flight (its answer is dropped), so a click never waits for a poll nor shows stale rows.
  async function refresh() {
    const generation = ++state.generation;
    state.busy = true;
    const where = current();
    try {
      const render = where.view === "vehicle"
        ? await loadVehicle(where.id, state.polls % SERIES_EVERY === 0)
        : await loadOverview(generation);
      if (generation !== state.generation) return;
      render();
      state.polls += 1;
      showError(null);
      $("live").textContent = `live · updated ${new Date().toLocaleTimeString("en-GB")}`;
      $("live").classList.remove("stalled");
      document.body.dataset.loaded = "true";
      if (!performance.getEntriesByName("dashboard-data").length) performance.mark("dashboard-data");
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.status === 401 || err.status === 403) {
        askForKey(err.status === 403 ? "this key lacks the read scope" : err.message);
      } else {
        showError(err);
        $("live").textContent = "not updating";
        $("live").classList.add("stalled");
      }
    } finally {
      if (generation === state.generation) state.busy = false;
    }
  }

  function stopPolling() {
    clearInterval(state.timer);
    state.timer = null;
  }

  function route() {
    const where = current();
    $("key-form").hidden = true;
    $("forget-key").hidden = !state.key;
    $("overview").hidden = where.view !== "overview";
    $("vehicle").hidden = where.view !== "vehicle";
    if (where.view === "vehicle") {
      $("vehicle-title").textContent = where.id;
      for (const id of ["v-soc", "v-temp", "v-power", "v-state", "v-seen", "v-meter"]) $(id).textContent = "…";
      for (const id of ["chart-energy", "chart-efficiency", "chart-soc", "chart-temp"]) $(id).replaceChildren(el("p", { class: "state" }, "Loading…"));
      stateRow($("assignment-rows"), 3, "Loading…");
    }
    state.polls = 0;
    stopPolling();
    refresh();
    state.timer = setInterval(() => {
      if (!document.hidden && !state.busy) refresh();
    }, POLL_MS);
  }

  window.addEventListener("hashchange", route);
  renderHealthFilter(null);
  route();
})();
