// The dashboard's "Accuracy over time" card: GET /performance, one point per night. Expected accuracy of the
// auto-routed items (calibrated confidences) as a line, measured accuracy (audit labels) as dots with their 95 %
// interval, and the version's validated accuracy as a dashed line.
(function () {
  "use strict";

  const POLL_MS = 30000;
  const COLORS = { expected: "#2f80c2", measured: "#1f8a4c", validated: "#8a94a0", grid: "#e6eaee", text: "#5b6770" };
  const $ = (id) => document.getElementById(id);

  function draw(canvas, nights) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 260;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "12px system-ui, sans-serif";
    canvas.dataset.rendered = String(nights.length);
    if (!nights.length) {
      ctx.fillStyle = COLORS.text;
      ctx.textAlign = "center";
      ctx.fillText("No finished nights yet", width / 2, height / 2);
      return;
    }
    const values = [];
    for (const n of nights) {
      for (const v of [n.expected_auto, n.measured_low, n.validated_auto]) if (typeof v === "number") values.push(v);
    }
    const lo = Math.max(0, Math.floor((Math.min(...values, 0.9) - 0.02) * 20) / 20);
    const pad = { left: 44, right: 12, top: 22, bottom: 30 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const x = (i) => pad.left + (nights.length === 1 ? plotW / 2 : (i / (nights.length - 1)) * plotW);
    const y = (v) => pad.top + plotH - ((v - lo) / (1 - lo)) * plotH;
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((1 - lo) * k) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText((100 * v).toFixed(0) + "%", pad.left - 6, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.max(1, Math.ceil(nights.length / 8));
    nights.forEach((n, i) => { if (i % every === 0) ctx.fillText(n.date.slice(5), x(i), pad.top + plotH + 8); });
    // Validated accuracy (dashed), expected (line), measured (dots with interval bars).
    ctx.setLineDash([5, 4]);
    path(ctx, nights, x, y, "validated_auto", COLORS.validated);
    ctx.setLineDash([]);
    path(ctx, nights, x, y, "expected_auto", COLORS.expected);
    ctx.strokeStyle = COLORS.measured;
    ctx.fillStyle = COLORS.measured;
    nights.forEach((n, i) => {
      if (typeof n.measured_auto !== "number") return;
      ctx.beginPath();
      ctx.moveTo(x(i), y(n.measured_low));
      ctx.lineTo(x(i), y(n.measured_high));
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(x(i), y(n.measured_auto), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    });
    ctx.textAlign = "left";
    ctx.fillStyle = COLORS.expected;
    ctx.fillText("expected", pad.left + 4, 4);
    ctx.fillStyle = COLORS.measured;
    ctx.fillText("measured (95 %)", pad.left + 70, 4);
    ctx.fillStyle = COLORS.validated;
    ctx.fillText("validated", pad.left + 178, 4);
  }

  function path(ctx, nights, x, y, key, color) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    nights.forEach((n, i) => {
      if (typeof n[key] !== "number") return;
      if (started) ctx.lineTo(x(i), y(n[key]));
      else ctx.moveTo(x(i), y(n[key]));
      started = true;
    });
    ctx.stroke();
    ctx.lineWidth = 1;
  }

  let last = [];

  async function refresh() {
    let body;
    try {
      const resp = await fetch("/performance");
      body = await resp.json();
      if (!resp.ok) throw new Error(body.message || resp.status);
    } catch (err) {
      $("accuracy-summary").textContent = "Accuracy over time unavailable: " + (err.message || err);
      return;
    }
    last = body.nights || [];
    const pill = $("accuracy-status");
    pill.textContent = body.status;
    pill.className = "pill " + ({ ok: "pill-ok", degraded: "pill-bad" }[body.status] || "pill-unknown");
    const n = last[last.length - 1];
    $("accuracy-summary").textContent = (n ? "Latest night " + n.date + ": expected " +
      (n.expected_auto === null ? "n/a" : (100 * n.expected_auto).toFixed(1) + " %") + " of the auto-routed items · " +
      n.audit_labels + " of " + n.audit_size + " audit items labelled. " : "") + body.reason;
    draw($("chart-accuracy"), last);
  }

  function start() {
    if (!$("chart-accuracy")) return;
    const tick = async () => {
      if (!document.hidden) await refresh();
      setTimeout(tick, POLL_MS);
    };
    tick();
    window.addEventListener("resize", () => draw($("chart-accuracy"), last));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
