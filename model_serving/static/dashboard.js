/* Operator dashboard: uploads to POST /predict and polls /health, /metrics and /drift-status.
 * Written defensively: any endpoint may be down, answer 503 or omit a field; missing values show "n/a"
 * and nothing throws. No external libraries (charts.js is ours).
 */
"use strict";

(function () {
  const POLL_METRICS_MS = 3000;
  const POLL_HEALTH_MS = 5000;
  const POLL_DRIFT_MS = 10000;
  const HISTORY_MS = 10 * 60 * 1000;
  const REQUEST_TIMEOUT_MS = 10000;
  const UPLOAD_CHUNK = 16; // files per POST /predict request
  const MAX_CARDS = 200; // result cards kept on the page
  const CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
  const COLORS = { p50: "#2f80c2", p95: "#e08a1e", p99: "#c0392b", rpm: "#1f4e79", rpmFill: "rgba(47,128,194,0.12)" };

  const history = { rpm: [], predictRate: [], p50: [], p95: [], p99: [] };
  let lastMetrics = null;

  // ---------- small helpers ----------
  const $ = (id) => document.getElementById(id);

  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }

  function get(obj, path) {
    let cur = obj;
    for (const key of path.split(".")) {
      if (cur === null || typeof cur !== "object" || !(key in cur)) return undefined;
      cur = cur[key];
    }
    return cur;
  }

  /** The first candidate path holding a finite number (numeric strings accepted). */
  function num(obj, ...paths) {
    for (const p of paths) {
      let v = get(obj, p);
      if (typeof v === "string" && v.trim() !== "" && isFinite(Number(v))) v = Number(v);
      if (isNum(v)) return v;
    }
    return null;
  }

  function first(obj, ...paths) {
    for (const p of paths) {
      const v = get(obj, p);
      if (v !== undefined && v !== null && v !== "") return v;
    }
    return null;
  }

  function text(v) {
    return v === null || v === undefined || v === "" ? "n/a" : String(v);
  }

  function fmt(v, digits) {
    return isNum(v) ? v.toFixed(digits) : "n/a";
  }

  function fmtP(v) {
    if (!isNum(v)) return "n/a";
    if (v === 0) return "0";
    return v < 0.001 ? v.toExponential(1) : v.toFixed(3);
  }

  function pct(v) {
    return isNum(v) ? (100 * v).toFixed(1) + "%" : "n/a";
  }

  function fmtBytes(v) {
    if (!isNum(v)) return "n/a";
    if (v >= 1024 ** 3) return (v / 1024 ** 3).toFixed(2) + " GiB";
    return (v / 1024 ** 2).toFixed(0) + " MiB";
  }

  function fmtDuration(seconds) {
    if (!isNum(seconds)) return "n/a";
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the page's CSP
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setPill(node, label, kind) {
    node.textContent = label;
    node.className = "pill pill-" + kind;
  }

  /** fetch + JSON that never throws: {ok, status, body, error}. */
  async function fetchJson(url, options) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(url, { ...(options || {}), signal: controller.signal, headers: { Accept: "application/json" } });
      let body = null;
      const raw = await res.text();
      try {
        body = raw ? JSON.parse(raw) : null;
      } catch (_) {
        body = null;
      }
      return { ok: res.ok, status: res.status, body, error: res.ok ? null : describeError(res.status, body, raw) };
    } catch (err) {
      const reason = err && err.name === "AbortError" ? "timed out" : "unreachable";
      return { ok: false, status: 0, body: null, error: "API " + reason };
    } finally {
      clearTimeout(timer);
    }
  }

  function describeError(status, body, raw) {
    const code = body && typeof body === "object" ? first(body, "error", "code") : null;
    const message = body && typeof body === "object" ? first(body, "message", "detail", "reason") : null;
    let out = "HTTP " + status;
    if (code && typeof code === "string") out += " " + code;
    if (message) out += ": " + message;
    else if (!body && raw && raw.length < 200) out += ": " + raw.replace(/<[^>]*>/g, " ").trim();
    return out;
  }

  // ---------- health / model ----------
  async function refreshHealth() {
    const r = await fetchJson("/health");
    const b = r.body && typeof r.body === "object" ? r.body : {};
    $("model-name").textContent = text(first(b, "model.name", "model_name"));
    $("model-version").textContent = text(first(b, "model.version", "model_version"));
    const link = $("model-mlflow");
    const url = first(b, "model.mlflow_url");
    if (typeof url === "string" && /^https?:\/\//.test(url)) {
      link.href = url;
      link.hidden = false;
    } else link.hidden = true;
    $("model-alias").textContent = text(first(b, "model.alias", "model_alias"));
    $("uptime").textContent = fmtDuration(num(b, "uptime_s", "uptime_seconds", "uptime"));
    const ready = first(b, "ready");
    const pill = $("health-status");
    if (r.ok && ready !== false) setPill(pill, "ready", "ok");
    else if (r.status === 503) setPill(pill, "not ready" + (b.status ? " · " + b.status : ""), "warn");
    else setPill(pill, r.status ? "error · HTTP " + r.status : "API unreachable", "bad");
    // r.error already holds the code and the reason of a 503; a ready /health may still carry them (serving the
    // local copy while the registry is unreachable).
    pill.title = r.error || [b.error, b.reason].filter((v) => typeof v === "string").join(": ");
  }

  // ---------- metrics ----------
  /** Latency of POST /predict: a flat {p50, p95, p99} block, or the /predict entry of a per-endpoint map. */
  function latencyBlock(m) {
    const candidates = ["latency_ms", "processing_ms", "processing_time_ms", "latency", "processing_time", "request_latency_ms"];
    for (const key of candidates) {
      const v = get(m, key);
      if (!v || typeof v !== "object") continue;
      if (percentile(v, "p50") !== null || percentile(v, "p95") !== null) return v;
      if (v["/predict"] && typeof v["/predict"] === "object") return v["/predict"];
      return {}; // per-endpoint map without /predict yet: nothing predicted so far
    }
    return {};
  }

  function percentile(block, name) {
    return num(block, name, name + "_ms", "percentiles." + name, "percentiles_ms." + name, name.replace("p", "q"));
  }

  /** Predictions per class as an array aligned with CLASS_NAMES when possible. */
  function classMix(m) {
    const raw = first(m, "predictions_per_class", "predictions_by_class", "class_counts", "predictions.per_class",
      "predictions.by_class", "classes");
    const labels = CLASS_NAMES.slice();
    const values = new Array(labels.length).fill(0);
    if (!raw) return null;
    const put = (key, count) => {
      if (!isNum(count)) return;
      let idx = typeof key === "number" ? key : CLASS_NAMES.indexOf(String(key));
      if (idx < 0 && /^\d+$/.test(String(key))) idx = Number(key);
      if (idx < 0) {
        labels.push(String(key));
        values.push(count);
      } else if (idx < values.length) values[idx] += count;
    };
    if (Array.isArray(raw)) {
      raw.forEach((item, i) => {
        if (isNum(item)) put(i, item);
        else if (item && typeof item === "object") {
          put(first(item, "class_name", "class_id", "name", "label") ?? i, num(item, "count", "value", "n"));
        }
      });
    } else if (typeof raw === "object") {
      for (const [k, v] of Object.entries(raw)) put(k, isNum(v) ? v : num(v, "count", "value"));
    }
    return { labels, values };
  }

  /** Confidence distribution as {labels, values}. Prometheus-style cumulative "le" buckets ({"0.1": n, ...,
   * "+Inf": n}, as /metrics reports them) are turned into per-bucket counts; plain dicts and arrays are taken as is. */
  function confidenceHistogram(m) {
    const raw = first(m, "predictions.confidence.buckets", "confidence_histogram", "confidence.buckets",
      "confidence_distribution", "confidence.histogram");
    if (!raw || typeof raw !== "object") return null;
    const edges = first(raw, "buckets", "bins", "edges", "le");
    const counts = first(raw, "counts", "values");
    if (Array.isArray(edges) && Array.isArray(counts)) {
      const labels = counts.map((_, i) => {
        const lo = edges.length === counts.length + 1 ? edges[i] : i === 0 ? 0 : edges[i - 1];
        const hi = edges.length === counts.length + 1 ? edges[i + 1] : edges[i];
        return (isNum(lo) ? String(lo) : "?") + "–" + (isNum(hi) ? String(hi) : String(hi));
      });
      return { labels, values: counts.map((c) => (isNum(c) ? c : 0)) };
    }
    if (Array.isArray(raw)) return null;
    const entries = Object.entries(raw)
      .map(([k, v]) => [k === "+Inf" ? Infinity : Number(k), v])
      .filter(([k, v]) => !isNaN(k) && isNum(v))
      .sort((a, b) => a[0] - b[0]);
    if (!entries.length) return null;
    const cumulative = "+Inf" in raw || entries.every((e, i) => i === 0 || e[1] >= entries[i - 1][1]);
    const labels = [];
    const values = [];
    let prevBound = 0;
    let prevCount = 0;
    for (const [bound, count] of entries) {
      const n = cumulative ? count - prevCount : count;
      if (bound === Infinity) {
        if (n > 0) {
          labels.push("> " + prevBound);
          values.push(n);
        }
        break;
      }
      labels.push(prevBound + "–" + bound);
      values.push(Math.max(0, n));
      prevBound = bound;
      prevCount = count;
    }
    return { labels, values };
  }

  function errorCount(m) {
    const direct = num(m, "errors_total", "errors", "requests.errors", "error_count");
    if (direct !== null) return direct;
    const by = first(m, "requests_by_endpoint", "requests_by_status", "requests.by_endpoint", "requests");
    if (!by || typeof by !== "object") return null;
    let errors = 0;
    let seen = false;
    const walk = (node, status) => {
      if (isNum(node)) {
        if (status !== null) {
          seen = true;
          if (status >= 400) errors += node;
        }
        return;
      }
      if (Array.isArray(node)) {
        for (const item of node) {
          const s = num(item, "status", "code");
          const c = num(item, "count", "value");
          if (s !== null && c !== null) {
            seen = true;
            if (s >= 400) errors += c;
          }
        }
        return;
      }
      if (node && typeof node === "object") {
        for (const [k, v] of Object.entries(node)) walk(v, /^\d{3}$/.test(k) ? Number(k) : status);
      }
    };
    walk(by, null);
    return seen ? errors : null;
  }

  function pushHistory(series, t, v) {
    series.push([t, isNum(v) ? v : null]);
    while (series.length && series[0][0] < t - HISTORY_MS) series.shift();
  }

  async function refreshMetrics() {
    const r = await fetchJson("/metrics");
    const now = Date.now();
    if (!r.ok || !r.body || typeof r.body !== "object") {
      // Keep the last picture; mark the gap in the time series.
      for (const s of Object.values(history)) pushHistory(s, now, null);
      $("rpm-hint").textContent = "metrics unavailable" + (r.error ? " (" + r.error + ")" : "");
      drawCharts();
      return;
    }
    const m = r.body;
    lastMetrics = m;
    const rpm = num(m, "requests_per_minute", "rpm", "requests.per_minute", "traffic.requests_per_minute",
      "predict.requests_per_minute");
    const lat = latencyBlock(m);
    const p50 = percentile(lat, "p50");
    const p95 = percentile(lat, "p95");
    const p99 = percentile(lat, "p99");
    pushHistory(history.rpm, now, rpm);
    // Every client's POST /predict in the last minute, counted by the server (curl, scripts, this page alike).
    const predictRpm = num(m, "predict_requests_per_minute");
    pushHistory(history.predictRate, now, predictRpm);
    pushHistory(history.p50, now, p50);
    pushHistory(history.p95, now, p95);
    pushHistory(history.p99, now, p99);
    const windowS = num(m, "window_s", "window_seconds", "rpm_window_s", "requests_window_s");
    $("rpm-hint").textContent = "last " + (windowS !== null ? windowS + " s" : "minute") + ": " +
      (isNum(predictRpm) ? Charts.formatNumber(predictRpm) + " POST /predict of " : "") +
      (isNum(rpm) ? Charts.formatNumber(rpm) + " requests" : "n/a") + " (polls included)";

    $("kpi-rpm").textContent = isNum(rpm) ? Charts.formatNumber(rpm) : "n/a";
    $("kpi-p95").textContent = isNum(p95) ? fmt(p95, p95 < 10 ? 2 : 1) + " ms" : "n/a";
    const mix = classMix(m);
    const predicted = num(m, "predictions_total", "predictions.total", "predictions_count") ??
      (mix ? mix.values.reduce((a, b) => a + b, 0) : null);
    $("kpi-predictions").textContent = isNum(predicted) ? Charts.formatNumber(predicted) : "n/a";
    const review = num(m, "needs_review_total", "needs_review_count", "needs_review", "predictions.needs_review");
    $("kpi-review").textContent = isNum(review)
      ? Charts.formatNumber(review) + (isNum(predicted) && predicted > 0 ? " (" + pct(review / predicted) + ")" : "")
      : "n/a";
    const errors = errorCount(m);
    const requestsTotal = num(m, "requests_total", "requests.total");
    $("kpi-errors").textContent = isNum(errors)
      ? Charts.formatNumber(errors) + (isNum(requestsTotal) && requestsTotal > 0 ? " (" + pct(errors / requestsTotal) + ")" : "")
      : "n/a";
    const cpu = num(m, "process.cpu_percent", "process_cpu_percent", "cpu_percent");
    const rss = num(m, "process.rss_bytes", "process_rss_bytes", "rss_bytes");
    const rssMb = rss === null ? num(m, "process.rss_mb", "process_rss_mb", "rss_mb") : null;
    $("kpi-process").textContent = (isNum(cpu) ? cpu.toFixed(0) + "%" : "n/a") + " / " +
      (isNum(rss) ? fmtBytes(rss) : isNum(rssMb) ? rssMb.toFixed(0) + " MiB" : "n/a");
    drawCharts();
  }

  function drawCharts() {
    const now = Date.now();
    Charts.line($("chart-rpm"), {
      now, windowMs: HISTORY_MS, unit: "req/min", emptyText: "Waiting for /metrics…",
      series: [
        { name: "all endpoints", color: COLORS.rpm, fill: COLORS.rpmFill, points: history.rpm },
        { name: "POST /predict", color: COLORS.p95, points: history.predictRate },
      ],
    });
    Charts.line($("chart-latency"), {
      now, windowMs: HISTORY_MS, unit: "ms", emptyText: "No requests timed yet",
      series: [
        { name: "p50", color: COLORS.p50, points: history.p50 },
        { name: "p95", color: COLORS.p95, points: history.p95 },
        { name: "p99", color: COLORS.p99, points: history.p99 },
      ],
    });
    const mix = lastMetrics ? classMix(lastMetrics) : null;
    Charts.bars($("chart-classes"), {
      labels: mix ? mix.labels : CLASS_NAMES, values: mix ? mix.values : [], color: "#2f80c2", showShare: true,
      emptyText: mix ? "No predictions yet" : "Class mix not reported",
    });
    const hist = lastMetrics ? confidenceHistogram(lastMetrics) : null;
    const threshold = lastMetrics ? num(lastMetrics, "review_threshold", "needs_review_threshold") : null;
    $("confidence-hint").textContent = "top-class confidence" + (isNum(threshold) ? " · review below " + threshold : "");
    Charts.bars($("chart-confidence"), {
      labels: hist ? hist.labels : [], values: hist ? hist.values : [],
      colors: hist ? hist.labels.map((l) => (isNum(threshold) && parseFloat(l) < threshold ? "#e08a1e" : "#1f8a4c")) : [],
      emptyText: hist ? "No predictions yet" : "Confidence distribution not reported",
    });
  }

  // ---------- drift ----------
  async function refreshDrift() {
    const r = await fetchJson("/drift-status");
    const verdict = $("drift-verdict");
    const summary = $("drift-summary");
    const rows = $("drift-rows");
    const b = r.body && typeof r.body === "object" ? r.body : null;
    if (!b || (!r.ok && !b.status)) {
      setPill(verdict, r.status === 503 ? "unavailable" : "error", r.status === 503 ? "warn" : "bad");
      summary.textContent = "Drift status unavailable: " + text(r.error);
      summary.classList.add("error");
      rows.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "n/a")));
      return;
    }
    summary.classList.remove("error");
    const status = text(first(b, "status"));
    const tests = Array.isArray(b.tests) ? b.tests : [];
    const anyFired = tests.some((t) => t && t.fired === true);
    if (status === "drift" || anyFired) setPill(verdict, "drift detected", "bad");
    else if (status === "ok") setPill(verdict, "no drift", "ok");
    else if (status === "insufficient_data") setPill(verdict, "collecting data", "warn");
    else setPill(verdict, status, r.ok ? "unknown" : "warn");

    const windowSize = num(b, "window_size", "window.size");
    const minWindow = num(b, "min_window", "window.min_size");
    const parts = [
      "Window " + text(windowSize) + (isNum(minWindow) ? " (min " + minWindow + ")" : "") + " items",
      "reference " + text(num(b, "reference_size", "reference.size")) + " items",
      "α = " + text(num(b, "alpha")) + (b.correction ? " (" + b.correction + ")" : ""),
    ];
    const refVersion = first(b, "model.version", "model_version", "reference_meta.model_version");
    if (refVersion !== null) parts.push("model version " + refVersion);
    if (status === "insufficient_data") parts.push("no verdict until the window holds enough items");
    if (b.message && typeof b.message === "string") parts.push(b.message);
    summary.textContent = parts.join(" · ");
    const reading = $("drift-reading");
    reading.textContent = typeof b.reading === "string" ? b.reading : "";
    reading.hidden = !reading.textContent;

    if (!tests.length) {
      rows.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No tests run yet")));
      return;
    }
    // Most suspicious first: fired tests, then by adjusted p-value.
    const sorted = tests.filter((t) => t && typeof t === "object").slice().sort((a, c) => {
      if (!!c.fired !== !!a.fired) return c.fired ? 1 : -1;
      const pa = isNum(a.p_value_adjusted) ? a.p_value_adjusted : isNum(a.p_value) ? a.p_value : 2;
      const pc = isNum(c.p_value_adjusted) ? c.p_value_adjusted : isNum(c.p_value) ? c.p_value : 2;
      return pa - pc;
    });
    rows.replaceChildren(...sorted.map((t) => {
      const effect = isNum(t.effect_size) ? t.effect_size.toFixed(3) + (t.effect_size_name ? " " + t.effect_size_name : "") : "n/a";
      const badge = el("span", { class: "pill " + (t.fired ? "pill-bad" : "pill-ok") }, t.fired ? "drift" : "ok");
      const meaning = t.fired && typeof t.reading === "string" && t.reading
        ? el("div", { class: "test-reading" }, t.reading) : null;
      return el("tr", { class: t.fired ? "fired" : "" },
        el("td", {}, text(t.name), meaning),
        el("td", { class: "num" }, fmt(t.statistic, 3)),
        el("td", { class: "num" }, fmtP(t.p_value)),
        el("td", { class: "num" }, fmtP(t.p_value_adjusted)),
        el("td", { class: "num" }, effect),
        el("td", {}, badge));
    }));
  }

  // ---------- uploads ----------
  function resultCard(file) {
    const img = el("img", { class: "thumb", alt: file.name });
    try {
      img.src = URL.createObjectURL(file);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
    } catch (_) {
      /* no preview: the prediction still renders */
    }
    const body = el("div", { class: "result-body" },
      el("div", { class: "result-title" }, el("span", { class: "result-class" }, "Classifying…")),
      el("div", { class: "result-file", title: file.name }, file.name));
    const card = el("div", { class: "result pending", "data-file": file.name }, img, body);
    return { card, body };
  }

  function renderPrediction(slot, p, context) {
    context = context || {};
    const confidence = num(p, "confidence");
    const review = p.needs_review === true;
    const className = text(first(p, "class_name", "label"));
    // Why a person should look (the API's review_reason): an item unlike any of the 10 classes is told apart from
    // one the model merely hesitates over, so the returns desk knows to check what the thing is, not which class.
    const unfamiliar = p.review_reason === "unfamiliar" || p.unfamiliar === true;
    const reason = !review ? null : unfamiliar ? "unfamiliar: may not be one of the 10 classes"
      : p.review_reason === "low_confidence" ? "low confidence" : null;
    const title = el("div", { class: "result-title" },
      el("span", { class: "result-class" }, className),
      el("span", { class: "pill " + (review ? "pill-warn" : "pill-ok") }, review ? "needs review" : "confident"));
    const why = reason === null ? null : el("div", { class: "review-reason" + (unfamiliar ? " unfamiliar" : "") }, reason);
    const bar = el("div", { class: "bar" + (review ? " low" : "") }, el("span", { style: { width: (isNum(confidence) ? Math.max(0, Math.min(1, confidence)) * 100 : 0) + "%" } }));
    const version = first(p, "model_version") ?? context.model_version ?? null;
    const ownMs = num(p, "processing_ms", "processing_time_ms", "latency_ms");
    const ms = ownMs ?? context.processing_ms ?? null;
    const confLine = el("div", { class: "conf-line" },
      el("span", {}, "confidence " + pct(confidence)),
      el("span", {}, (version !== null ? "v" + version + " · " : "") +
        (isNum(ms) ? fmt(ms, 1) + " ms" + (ownMs === null && context.count > 1 ? " for " + context.count : "") : "n/a")));
    const top = Array.isArray(p.top3) ? p.top3 : [];
    const list = el("ul", { class: "top3" }, ...top.map((t) => {
      const c = num(t, "confidence");
      return el("li", {},
        el("span", {}, text(first(t, "class_name", "label"))),
        el("span", { class: "mini" }, el("span", { style: { width: (isNum(c) ? Math.max(0, Math.min(1, c)) * 100 : 0) + "%" } })),
        el("span", { class: "pct" }, pct(c)));
    }));
    const file = slot.body.querySelector(".result-file");
    slot.body.replaceChildren(...[title, why, file, bar, confLine, list].filter((x) => x !== null));
    slot.card.className = "result done" + (review ? " review" : "") + (unfamiliar ? " unfamiliar" : "");
  }

  function renderFailure(slot, message) {
    const file = slot.body.querySelector(".result-file");
    slot.body.replaceChildren(
      el("div", { class: "result-title" }, el("span", { class: "result-class" }, "Not classified"),
        el("span", { class: "pill pill-bad" }, "error")),
      file, el("div", { class: "error-text" }, message));
    slot.card.className = "result failed";
  }

  async function uploadChunk(files, slots) {
    const form = new FormData();
    const field = files.length === 1 ? "file" : "files";
    for (const f of files) form.append(field, f, f.name);
    const r = await fetchJson("/predict", { method: "POST", body: form });
    const b = r.body && typeof r.body === "object" ? r.body : null;
    if (!r.ok && files.length > 1 && r.status >= 400 && r.status < 500 && r.status !== 429) {
      // The API refuses a whole request for one bad file (415 for a GIF, 400 for a broken one, 413 for one too
      // big): ask again one file at a time, so the good ones are classified and each bad one says why.
      let done = 0;
      for (let i = 0; i < files.length; i++) done += await uploadChunk([files[i]], [slots[i]]);
      return done;
    }
    if (!r.ok || !b) {
      slots.forEach((s) => renderFailure(s, r.error || "unexpected answer from /predict"));
      return 0;
    }
    const predictions = Array.isArray(b.predictions) ? b.predictions : files.length === 1 ? [b] : [];
    const context = {
      model_version: first(b, "model_version", "model.version"),
      processing_ms: num(b, "processing_ms"),
      count: predictions.length,
    };
    let done = 0;
    slots.forEach((s, i) => {
      const p = predictions[i];
      if (p && typeof p === "object" && !p.error) {
        renderPrediction(s, p, context);
        done += 1;
      } else {
        renderFailure(s, p && p.error ? describeError(r.status, p, "") : "no prediction returned for this file");
      }
    });
    return done;
  }

  async function upload(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const status = $("upload-status");
    status.classList.remove("error");
    status.textContent = "Classifying " + files.length + " photo" + (files.length > 1 ? "s" : "") + "…";
    const results = $("results");
    const slots = files.map(resultCard);
    results.prepend(...slots.map((s) => s.card));
    while (results.children.length > MAX_CARDS) results.lastElementChild.remove();
    $("clear-results").hidden = false;
    const started = performance.now();
    let ok = 0;
    for (let i = 0; i < files.length; i += UPLOAD_CHUNK) {
      ok += await uploadChunk(files.slice(i, i + UPLOAD_CHUNK), slots.slice(i, i + UPLOAD_CHUNK));
    }
    const ms = performance.now() - started;
    status.textContent = ok + " of " + files.length + " classified in " + ms.toFixed(0) + " ms (round trip)";
    if (ok < files.length) status.classList.add("error");
    // The upload changed the counters and the drift window: show it now rather than at the next poll.
    refreshMetrics();
    refreshDrift();
  }

  function wireUpload() {
    const input = $("file-input");
    $("clear-results").addEventListener("click", () => {
      $("results").replaceChildren();
      $("upload-status").textContent = "";
      $("clear-results").hidden = true;
    });
    const zone = $("dropzone");
    input.addEventListener("change", () => {
      upload(input.files).finally(() => {
        input.value = "";
      });
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragover");
      if (e.dataTransfer) upload(e.dataTransfer.files);
    });
  }

  // ---------- polling ----------
  function poll(fn, everyMs) {
    const tick = async () => {
      try {
        if (!document.hidden) await fn();
        $("last-update").textContent = "Updated " + new Date().toLocaleTimeString();
      } catch (err) {
        // A rendering bug must not stop the dashboard; show it where an operator looks.
        $("last-update").textContent = "Dashboard error: " + (err && err.message ? err.message : err);
      }
      setTimeout(tick, everyMs);
    };
    tick();
  }

  function start() {
    wireUpload();
    drawCharts();
    poll(refreshHealth, POLL_HEALTH_MS);
    poll(refreshMetrics, POLL_METRICS_MS);
    poll(refreshDrift, POLL_DRIFT_MS);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawCharts, 150);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
