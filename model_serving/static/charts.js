/* Tiny hand-written canvas charts for the operator dashboard (no external libraries).
 * Charts.line(canvas, {series: [{name, color, points: [[timeMs, value|null], ...]}], unit, windowMs})
 * Charts.bars(canvas, {labels: [...], values: [...], color, unit})
 * Both redraw from scratch, handle high-DPI screens, and draw a clear "no data" state.
 * Each canvas gets data-rendered="<n points|bars>" (bar charts also data-total, line charts data-latest: each
 * series' latest value as JSON) so tests and operators can tell what it drew.
 */
"use strict";

(function () {
  const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
  const INK = "#1c2430";
  const MUTED = "#66717f";
  const GRID = "#e6ebf0";

  function setup(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(canvas.clientWidth, 50);
    const height = Math.max(canvas.clientHeight, 50);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    return { ctx, width, height };
  }

  /** A "nice" axis step (1, 2, 2.5 or 5 times a power of ten) so that 4 steps cover value. */
  function niceStep(value) {
    const raw = value > 0 ? value / 4 : 0.25;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (raw <= m * exp) return m * exp;
    }
    return 10 * exp;
  }

  function formatNumber(value) {
    if (value === null || value === undefined || !isFinite(value)) return "n/a";
    const abs = Math.abs(value);
    if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (abs >= 1e4) return (value / 1e3).toFixed(0) + "k";
    if (abs >= 1e3) return (value / 1e3).toFixed(1) + "k";
    if (abs >= 100 || Number.isInteger(value)) return value.toFixed(0);
    if (abs >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  function emptyState(ctx, width, height, text) {
    ctx.fillStyle = MUTED;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text || "No data yet", width / 2, height / 2);
  }

  function clock(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function line(canvas, options) {
    const { ctx, width, height } = setup(canvas);
    const series = (options.series || []).filter((s) => Array.isArray(s.points));
    const now = options.now || Date.now();
    // The time axis grows with the history (at least minWindowMs) up to maxWindowMs, so a fresh page is readable.
    const maxWindowMs = options.windowMs || 10 * 60 * 1000;
    const minWindowMs = Math.min(options.minWindowMs || 60 * 1000, maxWindowMs);
    let oldest = now;
    for (const s of series) if (s.points.length) oldest = Math.min(oldest, s.points[0][0]);
    const windowMs = Math.max(minWindowMs, Math.min(maxWindowMs, now - oldest));
    const t0 = now - windowMs;
    let count = 0;
    let maxValue = 0;
    for (const s of series) {
      for (const [t, v] of s.points) {
        if (t >= t0 && v !== null && isFinite(v)) {
          count += 1;
          maxValue = Math.max(maxValue, v);
        }
      }
    }
    canvas.dataset.rendered = String(count);
    // The latest value of each series ({"name": value}), for tests and operators.
    const latest = {};
    for (const s of series) {
      const last = s.points.filter((p) => p[1] !== null && isFinite(p[1])).pop();
      if (last) latest[s.name] = last[1];
    }
    canvas.dataset.latest = JSON.stringify(latest);
    const pad = { left: 46, right: 12, top: 24, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const yStep = niceStep(maxValue * 1.05);
    const yMax = yStep * 4;
    const x = (t) => pad.left + ((t - t0) / windowMs) * plotW;
    const y = (v) => pad.top + plotH - (v / yMax) * plotH;

    // Grid and y labels.
    ctx.strokeStyle = GRID;
    ctx.lineWidth = 1;
    ctx.fillStyle = MUTED;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = yStep * i;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(width - pad.right, yy);
      ctx.stroke();
      ctx.fillText(formatNumber(v), pad.left - 6, yy);
    }
    // Time labels.
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (windowMs * i) / 4;
      const label = i === 4 ? "now" : clock(t);
      ctx.fillText(label, Math.min(Math.max(x(t), pad.left + 24), width - pad.right - 18), pad.top + plotH + 6);
    }
    if (options.unit) {
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillText(options.unit, 4, 4);
    }
    // Legend.
    let lx = width - pad.right;
    ctx.textBaseline = "top";
    ctx.textAlign = "right";
    for (const s of series.slice().reverse()) {
      const w = ctx.measureText(s.name).width;
      ctx.fillStyle = INK;
      ctx.fillText(s.name, lx, 4);
      ctx.fillStyle = s.color;
      ctx.fillRect(lx - w - 14, 8, 10, 4);
      lx -= w + 26;
    }
    if (count === 0) {
      emptyState(ctx, width, height + 10, options.emptyText);
      return;
    }
    // Lines (gaps where a value is missing) and the latest point.
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top - 2, plotW + 2, plotH + 4);
    ctx.clip();
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let drawing = false;
      let last = null;
      for (const [t, v] of s.points) {
        if (v === null || !isFinite(v) || t < t0 - windowMs * 0.05) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(t), y(v));
        else ctx.moveTo(x(t), y(v));
        drawing = true;
        last = [t, v];
      }
      ctx.stroke();
      if (s.fill && s.points.length) {
        const pts = s.points.filter(([t, v]) => v !== null && isFinite(v) && t >= t0 - windowMs * 0.05);
        if (pts.length > 1) {
          ctx.beginPath();
          ctx.moveTo(x(pts[0][0]), y(0));
          for (const [t, v] of pts) ctx.lineTo(x(t), y(v));
          ctx.lineTo(x(pts[pts.length - 1][0]), y(0));
          ctx.closePath();
          ctx.fillStyle = s.fill;
          ctx.fill();
        }
      }
      if (last) {
        ctx.fillStyle = s.color;
        ctx.beginPath();
        ctx.arc(x(last[0]), y(last[1]), 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.restore();
  }

  function bars(canvas, options) {
    const { ctx, width, height } = setup(canvas);
    const labels = options.labels || [];
    const values = (options.values || []).map((v) => (v === null || !isFinite(v) ? 0 : v));
    const total = values.reduce((a, b) => a + b, 0);
    canvas.dataset.rendered = String(total > 0 ? labels.length : 0);
    canvas.dataset.total = String(total);
    if (!labels.length || total <= 0) {
      emptyState(ctx, width, height, options.emptyText);
      return;
    }
    const labelW = Math.min(130, Math.max(...labels.map((l) => ctx.measureText(l).width)) + 12);
    const pad = { left: labelW, right: 78, top: 4, bottom: 4 };
    const rowH = (height - pad.top - pad.bottom) / labels.length;
    const barH = Math.max(4, Math.min(16, rowH * 0.62));
    const maxValue = Math.max(...values);
    const plotW = width - pad.left - pad.right;
    ctx.textBaseline = "middle";
    labels.forEach((label, i) => {
      const cy = pad.top + rowH * i + rowH / 2;
      ctx.fillStyle = INK;
      ctx.textAlign = "right";
      ctx.fillText(label, pad.left - 10, cy);
      ctx.fillStyle = "#eef1f5";
      ctx.fillRect(pad.left, cy - barH / 2, plotW, barH);
      const w = maxValue > 0 ? (values[i] / maxValue) * plotW : 0;
      ctx.fillStyle = (options.colors && options.colors[i]) || options.color || "#2f80c2";
      ctx.fillRect(pad.left, cy - barH / 2, w, barH);
      ctx.fillStyle = MUTED;
      ctx.textAlign = "left";
      const share = total > 0 ? ((100 * values[i]) / total).toFixed(0) + "%" : "";
      ctx.fillText(formatNumber(values[i]) + (options.showShare ? " · " + share : ""), pad.left + plotW + 8, cy);
    });
  }

  window.Charts = { line, bars, formatNumber };
})();
