// The flow-worker status page: polls the worker's JSON API (same origin) once a second and renders
// the mesh, the queries and the stage graph of one query. Plain DOM, no framework, no build step.
// Every piece of text from the API goes through textContent / setAttribute, never innerHTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 4000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const view = {
    selectedId: null, // the query whose stages are shown
    pinned: false, // true once the user clicked a query; otherwise follow the newest running one
    queries: [], // the last list from api/queries
    pinnedQuery: null, // the pinned query when it has dropped out of that list
    keys: { queries: "", graph: "" }, // what each section was last drawn from (skip unchanged redraws)
    lastOk: null, // Date of the last successful poll
  };

  // ------------------------------------------------------------------ small helpers

  function byId(id) {
    return document.getElementById(id);
  }

  // el("td", {className: "num", text: "3", data: {state: "up"}, title: "..."}, [children])
  function el(tag, props, children) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.className) node.className = p.className;
    if (p.text !== undefined && p.text !== null) node.textContent = String(p.text);
    if (p.title) node.title = String(p.title);
    for (const [key, value] of Object.entries(p.data || {})) {
      node.dataset[key] = String(value);
    }
    for (const [key, value] of Object.entries(p.attrs || {})) {
      node.setAttribute(key, String(value));
    }
    for (const child of children || []) {
      if (child) node.appendChild(child);
    }
    return node;
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  function fmtCount(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }

  function fmtBytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
  }

  function fmtDuration(seconds) {
    if (typeof seconds !== "number") return "–";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const s = Math.floor(seconds);
    const pad = (x) => String(x).padStart(2, "0");
    if (s < 3600) return Math.floor(s / 60) + " m " + pad(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " m";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  function oneLine(sql) {
    return String(sql || "").replace(/\s+/g, " ").trim();
  }

  // An absolute http(s) URL (a peer's own status page), else null.
  function safeHttpUrl(text) {
    if (typeof text !== "string" || text === "") return null;
    try {
      const url = new URL(text);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (err) {
      return null;
    }
  }

  function isBad(state) {
    return state === "failed" || state === "cancelled";
  }

  function badge(state) {
    return el("span", { className: "state state-" + state, text: state });
  }

  // ------------------------------------------------------------------ fetching

  class HttpError extends Error {
    constructor(path, status) {
      super(path + ": HTTP " + status);
      this.status = status;
    }
  }

  async function getJSON(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        signal: abort.signal,
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new HttpError(path, response.status);
      return await response.json();
    } catch (err) {
      if (err.name === "AbortError") throw new Error(path + ": no answer in " + FETCH_TIMEOUT_MS / 1000 + " s");
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      const [status, list] = await Promise.all([getJSON("api/status"), getJSON("api/queries")]);
      view.queries = Array.isArray(list.queries) ? list.queries : [];
      view.pinnedQuery = null;
      if (view.pinned && !view.queries.some((q) => q.id === view.selectedId)) {
        try {
          view.pinnedQuery = await getJSON("api/queries/" + encodeURIComponent(view.selectedId));
        } catch (err) {
          if (!(err instanceof HttpError && (err.status === 404 || err.status === 422))) throw err;
          view.pinned = false; // forgotten by the mesh: follow the newest query again
        }
      }
      view.lastOk = new Date();
      showApiError(null);
      renderStatus(status);
      renderQueriesAndGraph();
    } catch (err) {
      showApiError(err);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function showApiError(err) {
    const banner = byId("api-error");
    document.body.classList.toggle("stale", err !== null);
    if (err === null) {
      banner.hidden = true;
      banner.textContent = "";
      setText("updated", "updated " + view.lastOk.toLocaleTimeString());
      return;
    }
    const since = view.lastOk ? " — showing data from " + view.lastOk.toLocaleTimeString() : "";
    banner.textContent = "API unreachable (" + (err.message || String(err)) + ")" + since;
    banner.hidden = false;
  }

  // ------------------------------------------------------------------ header and mesh

  function renderStatus(status) {
    const load = status.load || {};
    document.title = (status.name || "flow-worker") + " · flow-worker status";
    setText("worker-name", status.name || "");
    setText("worker-address", status.address || "–");
    setText(
      "worker-version",
      (status.version || "?") + (status.datafusion_version ? " (DataFusion " + status.datafusion_version + ")" : "")
    );
    setText("worker-uptime", fmtDuration(status.uptime_seconds));
    setText(
      "worker-tasks",
      fmtCount(load.tasks_running) + " running, " + fmtCount(load.tasks_queued) + " queued, max " + fmtCount(load.max_tasks)
    );
    setText("worker-cpu", typeof load.cpu_percent === "number" ? load.cpu_percent.toFixed(0) + " %" : "–");
    setText("worker-memory", fmtBytes(load.memory_bytes));
    setText("worker-disk", fmtBytes(load.work_dir_bytes));
    const tables = status.tables || [];
    setText("worker-tables", tables.length ? tables.join(", ") : "none");

    const self = {
      name: status.name,
      address: status.address,
      state: "up",
      tasks_running: load.tasks_running,
      last_seen_seconds: null,
      self: true,
    };
    const rows = [self, ...(status.peers || [])].map(peerRow);
    byId("peers").replaceChildren(...rows);
  }

  function peerRow(peer) {
    const state = peer.state || "unknown";
    let seen = "never";
    if (peer.self) seen = "now";
    else if (typeof peer.last_seen_seconds === "number") seen = fmtDuration(peer.last_seen_seconds) + " ago";
    const name = el("td");
    const link = safeHttpUrl(peer.http);
    if (link && !peer.self) {
      // its own status page; only http(s) URLs become links (never javascript: or data:)
      name.appendChild(el("a", { text: peer.name || peer.address, attrs: { href: link }, title: link }));
    } else {
      name.textContent = peer.name || "–";
    }
    if (peer.self) name.appendChild(el("span", { className: "tag", text: "this worker" }));
    return el("tr", { className: peer.self ? "self" : "", data: { address: peer.address, state: state } }, [
      name,
      el("td", { className: "mono", text: peer.address }),
      el("td", {}, [badge(state)]),
      el("td", { className: "num", text: fmtCount(peer.tasks_running) }),
      el("td", { text: seen }),
    ]);
  }

  // ------------------------------------------------------------------ queries

  function selectedQuery() {
    if (view.pinned) {
      return view.queries.find((q) => q.id === view.selectedId) || view.pinnedQuery;
    }
    // follow the newest running query, else the newest query (the API lists newest first)
    return view.queries.find((q) => q.state === "running") || view.queries[0] || null;
  }

  function renderQueriesAndGraph() {
    const query = selectedQuery();
    if (!view.pinned) view.selectedId = query ? query.id : null; // a pinned id stays until forgotten

    const queriesKey = JSON.stringify([view.queries, view.selectedId, view.pinned]);
    if (queriesKey !== view.keys.queries) {
      view.keys.queries = queriesKey;
      renderQueries();
    }
    const graphKey = JSON.stringify([query, view.pinned]);
    if (graphKey !== view.keys.graph) {
      view.keys.graph = graphKey;
      renderGraph(query);
    }
  }

  function renderQueries() {
    const running = view.queries.filter((q) => q.state === "running");
    const recent = view.queries.filter((q) => q.state !== "running");
    const rows = [...running, ...recent].map((q) => {
      const row = el(
        "tr",
        {
          className: q.id === view.selectedId ? "selected" : "",
          data: { queryId: q.id, state: q.state },
          attrs: { tabindex: "0" },
          title: "show the stages of query " + q.id,
        },
        [
          el("td", { className: "mono", text: shortId(q.id), title: q.id }),
          el("td", {}, [badge(q.state)]),
          el("td", { className: "sql", text: oneLine(q.sql), title: q.sql }),
          el("td", { text: q.submitter || "–" }),
          el("td", { className: "num", text: fmtDuration(q.elapsed_seconds) }),
          el("td", { className: "num", text: fmtCount(q.rows) }),
          el("td", { className: "num", text: fmtBytes(q.bytes) }),
        ]
      );
      return row;
    });
    byId("queries").replaceChildren(...rows);
    byId("queries-empty").hidden = rows.length > 0;
  }

  function onQueryChosen(event) {
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    const row = event.target.closest("tr[data-query-id]");
    if (!row) return;
    event.preventDefault();
    const id = row.dataset.queryId;
    if (view.pinned && view.selectedId === id) {
      view.pinned = false; // a second click on the shown query: follow the newest running one again
    } else {
      view.pinned = true;
      view.selectedId = id;
    }
    renderQueriesAndGraph();
  }

  // ------------------------------------------------------------------ stage graph

  // Depth of each stage: 0 for stages without inputs, else one more than its deepest input.
  function stageDepths(stages) {
    const byStageId = new Map(stages.map((s) => [String(s.id), s]));
    const depth = new Map();
    function visit(stage, trail) {
      const key = String(stage.id);
      if (depth.has(key)) return depth.get(key);
      if (trail.has(key)) return 0; // a cycle would be a bug upstream: do not loop
      trail.add(key);
      let d = 0;
      for (const input of stage.inputs || []) {
        const producer = byStageId.get(String(input));
        if (producer) d = Math.max(d, visit(producer, trail) + 1);
      }
      trail.delete(key);
      depth.set(key, d);
      return d;
    }
    stages.forEach((s) => visit(s, new Set()));
    return depth;
  }

  function renderGraph(query) {
    const graph = byId("graph");
    graph.replaceChildren();
    graph.className = "";
    if (!query) {
      delete graph.dataset.queryId;
      delete graph.dataset.state;
      setText("graph-title", "");
      setText("graph-sql", "");
      graph.appendChild(el("p", { className: "empty", text: "No query to show." }));
      return;
    }
    graph.dataset.queryId = query.id;
    graph.dataset.state = query.state;
    if (isBad(query.state)) graph.classList.add("bad");
    const how = view.pinned ? "selected; click it again to follow the newest" : "newest; click a query to pick one";
    setText("graph-title", "of " + shortId(query.id) + " (" + query.state + ", " + how + ")");
    setText("graph-sql", oneLine(query.sql));

    const facts = [
      "elapsed " + fmtDuration(query.elapsed_seconds),
      fmtCount(query.rows) + " rows",
      fmtBytes(query.bytes),
      "asked " + (query.peers_asked || []).length + " peers",
    ];
    if ((query.peers_unreachable || []).length) {
      facts.push("unreachable: " + query.peers_unreachable.join(", "));
    }
    graph.appendChild(el("p", { className: "query-facts", text: facts.join(" · ") }));
    if (isBad(query.state)) {
      graph.appendChild(el("p", { className: "query-bad", text: "query " + query.state }));
    }

    const stages = Array.isArray(query.stages) ? query.stages : [];
    if (stages.length === 0) {
      graph.appendChild(el("p", { className: "empty", text: "No stages reported yet." }));
      return;
    }
    const depth = stageDepths(stages);
    const columns = [];
    for (const stage of stages) {
      const d = depth.get(String(stage.id));
      (columns[d] = columns[d] || []).push(stage);
    }
    const canvas = el("div", { className: "canvas" });
    const lanes = el("div", { className: "columns" });
    const boxes = new Map();
    for (const column of columns) {
      if (!column) continue;
      column.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const lane = el("div", { className: "column" });
      for (const stage of column) {
        const box = stageBox(stage, query);
        boxes.set(String(stage.id), box);
        lane.appendChild(box);
      }
      lanes.appendChild(lane);
    }
    canvas.appendChild(lanes);
    graph.appendChild(canvas);
    drawEdges(canvas, stages, boxes);
  }

  function stageBox(stage, query) {
    const tasks = stage.tasks || {};
    const done = tasks.done || 0;
    const running = tasks.running || 0;
    const failed = tasks.failed || 0;
    const cancelled = tasks.cancelled || 0;
    const total = done + running + failed;
    const pct = total ? Math.round((100 * done) / total) : 0;
    // the root stage runs on the submitter: no worker counts its tasks, it goes as the query goes
    const onSubmitter = stage.kind === "root" && total === 0;
    const classes = ["stage", "kind-" + stage.kind];
    if (failed) classes.push("has-failed");
    else if (running || (onSubmitter && query.state === "running")) classes.push("is-running");
    else if ((total && done === total) || (onSubmitter && query.state === "done")) classes.push("is-done");

    const bar = el(
      "div",
      {
        className: "progress",
        attrs: { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct },
        title: pct + " % of tasks done",
      },
      [
        segment("done", done, total),
        segment("running", running, total),
        segment("failed", failed, total),
      ]
    );
    let counts = done + "/" + total + " tasks done";
    if (running) counts += " · " + running + " running";
    if (failed) counts += " · " + failed + " failed";
    if (cancelled) counts += " · " + cancelled + " cancelled";

    const peers = stage.peers || [];
    let where = peers.length ? "on " + peers.join(", ") : "no peer yet";
    if (onSubmitter) {
      counts = "runs on the submitter";
      where = "on " + (query.submitter || "the submitter");
    }
    return el(
      "div",
      {
        className: classes.join(" "),
        data: { stageId: stage.id, kind: stage.kind, done: done, running: running, failed: failed, total: total },
      },
      [
        el("div", { className: "stage-head" }, [
          el("span", { className: "stage-id", text: "stage " + stage.id }),
          el("span", { className: "kind", text: stage.kind }),
        ]),
        onSubmitter ? null : bar,
        el("div", { className: "counts", text: counts }),
        onSubmitter ? null : el("div", { className: "metrics", text: fmtCount(stage.rows) + " rows · " + fmtBytes(stage.bytes) }),
        el("div", { className: "stage-peers", title: peers.join("\n"), text: where }),
      ]
    );
  }

  function segment(kind, count, total) {
    const seg = el("span", { className: "seg seg-" + kind });
    seg.style.width = (total ? (100 * count) / total : 0) + "%";
    return seg;
  }

  // Lines from each input stage's right edge to its consumer's left edge, in an SVG under the boxes.
  function drawEdges(canvas, stages, boxes) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "edges");
    svg.setAttribute("aria-hidden", "true");
    const origin = canvas.getBoundingClientRect();
    svg.setAttribute("width", String(canvas.scrollWidth));
    svg.setAttribute("height", String(canvas.scrollHeight));
    for (const stage of stages) {
      const to = boxes.get(String(stage.id));
      for (const input of stage.inputs || []) {
        const from = boxes.get(String(input));
        if (!from || !to) continue;
        const a = from.getBoundingClientRect();
        const b = to.getBoundingClientRect();
        const x1 = a.right - origin.left;
        const y1 = a.top + a.height / 2 - origin.top;
        const x2 = b.left - origin.left;
        const y2 = b.top + b.height / 2 - origin.top;
        const bend = Math.max(20, (x2 - x1) / 2);
        const path = document.createElementNS(SVG_NS, "path");
        path.setAttribute("d", `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`);
        path.dataset.from = String(input);
        path.dataset.to = String(stage.id);
        svg.appendChild(path);
        const head = document.createElementNS(SVG_NS, "path");
        head.setAttribute("class", "arrow");
        head.setAttribute("d", `M ${x2} ${y2} l -7 -4 v 8 z`);
        svg.appendChild(head);
      }
    }
    canvas.insertBefore(svg, canvas.firstChild);
  }

  // ------------------------------------------------------------------ start

  const table = byId("queries");
  table.addEventListener("click", onQueryChosen);
  table.addEventListener("keydown", onQueryChosen);
  window.addEventListener("resize", () => {
    view.keys.graph = ""; // boxes moved: redraw the lines
    renderQueriesAndGraph();
  });
  poll();
})();
