// The interactive part of a MatEnsemble run report: canvas drawing, hover and zoom.
// Everything it needs is in the page (the JSON in #report-data); it loads nothing.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const LEFT = 150, RIGHT = 12, TOP = 6, AXIS = 22;
  const full = { t0: 0, t1: D.end > 0 ? D.end : 1 };
  let view = { t0: full.t0, t1: full.t1 };
  const tip = document.getElementById("tip");
  const A = D.attempts, B = D.bars;
  const nRows = D.rows.length;

  function setup(canvas, cssHeight) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 1000;
    canvas.style.height = cssHeight + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { ctx: ctx, w: width, h: cssHeight };
  }
  function xOf(t, w) { return LEFT + (t - view.t0) / (view.t1 - view.t0) * (w - LEFT - RIGHT); }
  function tOf(x, w) { return view.t0 + (x - LEFT) / (w - LEFT - RIGHT) * (view.t1 - view.t0); }

  function niceStep(span, count) {
    const raw = span / count, p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }
  function drawTimeAxis(c, y) {
    const ctx = c.ctx, step = niceStep(view.t1 - view.t0, 8);
    ctx.fillStyle = "#444"; ctx.strokeStyle = "#eee"; ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      const x = xOf(t, c.w);
      ctx.beginPath(); ctx.moveTo(x, TOP); ctx.lineTo(x, y); ctx.stroke();
      ctx.fillText(fmt(t), x, y + 14);
    }
    ctx.textAlign = "left";
  }
  function fmt(t) {
    const a = Math.abs(t);
    if (Number.isInteger(t)) return String(t);
    return a >= 100 ? t.toFixed(0) : a >= 1 ? t.toFixed(2) : t.toPrecision(3);
  }

  // -- timeline ---------------------------------------------------------------------------
  const tl = document.getElementById("timeline");
  // Rows shrink below a pixel for very large machines: the canvas stays at most ~700 px high.
  const rowH = Math.min(18, 640 / Math.max(1, nRows));
  const tlHeight = Math.max(60, Math.ceil(nRows * rowH)) + TOP + AXIS;
  const order = B.a.map(function (_, i) { return i; });
  order.sort(function (i, j) { return A.o[B.a[i]] - A.o[B.a[j]]; });

  function drawTimeline() {
    const c = setup(tl, tlHeight), ctx = c.ctx;
    ctx.clearRect(0, 0, c.w, c.h);
    drawTimeAxis(c, c.h - AXIS);
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    let lastNode = null;
    for (let r = 0; r < nRows; r++) {
      const label = D.rows[r];
      if (rowH >= 9) {
        ctx.fillText(label, 4, TOP + (r + 0.5) * rowH);
      } else {
        const node = label.replace(/ (core|gpu) .*$/, "");
        if (node !== lastNode && TOP + r * rowH > (lastNode === null ? -99 : 0)) {
          ctx.fillText(node, 4, TOP + r * rowH + 6);
          lastNode = node;
        }
      }
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(LEFT, 0, c.w - LEFT - RIGHT, c.h); ctx.clip();
    let drawn = 0, colour = -1;
    const gap = rowH >= 4 ? 1 : 0;
    for (const i of order) {
      const a = B.a[i], s = A.s[a], e = A.e[a];
      if (e < view.t0 || s > view.t1) continue;
      const x0 = xOf(s, c.w), x1 = xOf(e, c.w);
      if (A.o[a] !== colour) { colour = A.o[a]; ctx.fillStyle = D.colours[colour]; }
      const y = TOP + B.lo[i] * rowH;
      ctx.fillRect(x0, y, Math.max(1, x1 - x0), Math.max(1, (B.hi[i] - B.lo[i] + 1) * rowH - gap));
      drawn++;
    }
    ctx.restore();
    tl.dataset.barsDrawn = String(drawn);
    return drawn;
  }

  function barAt(x, y) {
    const row = Math.floor((y - TOP) / rowH);
    if (row < 0 || row >= nRows) return -1;
    const w = tl.clientWidth, t = tOf(x, w), slack = 2 * (view.t1 - view.t0) / (w - LEFT - RIGHT);
    let found = -1;
    for (let i = 0; i < B.a.length; i++) {
      if (B.lo[i] <= row && row <= B.hi[i]) {
        const a = B.a[i];
        if (A.s[a] - slack <= t && t <= A.e[a] + slack) found = i;
      }
    }
    return found;
  }
  function describe(i) {
    const a = B.a[i];
    const lines = [
      "task     " + D.tasks[A.task[a]],
      "attempt  " + A.n[a],
      "outcome  " + D.outcomes[A.o[a]],
      "start    " + fmt(A.s[a]) + " s",
      "end      " + fmt(A.e[a]) + " s  (" + fmt(A.e[a] - A.s[a]) + " s)",
      "exit     " + (A.x[a] === null ? "-" : A.x[a]),
      "slots    " + D.rows[B.lo[i]] + (B.hi[i] > B.lo[i] ? " .. " + D.rows[B.hi[i]] : ""),
    ];
    if (A.r[a]) lines.push("reason   " + A.r[a]);
    return lines.join("\n");
  }

  // -- utilisation and state counts -------------------------------------------------------
  function stepAt(times, t) {
    let lo = 0, hi = times.length - 1;
    if (t < times[0]) return -1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (times[mid] <= t) lo = mid; else hi = mid - 1; }
    return lo;
  }
  function drawSteps(canvasId, series, stacked) {
    const canvas = document.getElementById(canvasId);
    const c = setup(canvas, 190), ctx = c.ctx, bottom = c.h - AXIS;
    ctx.clearRect(0, 0, c.w, c.h);
    drawTimeAxis(c, bottom);
    let ymax = 1;
    if (stacked) {
      for (let k = 0; k < series.t.length; k++) {
        let sum = 0; for (const name in series.v) sum += series.v[name][k]; ymax = Math.max(ymax, sum);
      }
    } else {
      for (const name in series) for (const v of series[name].v) ymax = Math.max(ymax, v);
    }
    const yOf = function (v) { return bottom - v / ymax * (bottom - TOP - 4); };
    ctx.fillStyle = "#444"; ctx.font = "11px sans-serif";
    ctx.fillText(fmt(ymax), 4, yOf(ymax) + 4); ctx.fillText("0", 4, bottom);
    ctx.save(); ctx.beginPath(); ctx.rect(LEFT, 0, c.w - LEFT - RIGHT, c.h); ctx.clip();
    if (stacked) {
      const t = series.t, base = new Array(t.length).fill(0);
      for (const name of D.states) {
        const v = series.v[name];
        if (!v.some(function (x) { return x > 0; })) continue;
        ctx.fillStyle = D.stateColours[name];
        ctx.beginPath();
        for (let k = 0; k < t.length; k++) {
          const x0 = xOf(t[k], c.w), x1 = xOf(k + 1 < t.length ? t[k + 1] : D.end, c.w);
          if (x1 < LEFT || x0 > c.w) continue;
          ctx.rect(x0, yOf(base[k] + v[k]), Math.max(0.5, x1 - x0), yOf(base[k]) - yOf(base[k] + v[k]));
        }
        ctx.fill();
        for (let k = 0; k < t.length; k++) base[k] += v[k];
      }
    } else {
      for (const name in series) {
        const s = series[name];
        if (!s.v.some(function (x) { return x > 0; })) continue;
        ctx.strokeStyle = D.lineColours[name]; ctx.lineWidth = 1.5;
        ctx.setLineDash(name.indexOf("available") === 0 ? [5, 4] : []);
        ctx.beginPath(); ctx.moveTo(xOf(s.t[0], c.w), yOf(s.v[0]));
        for (let k = 1; k < s.t.length; k++) {
          const x = xOf(s.t[k], c.w);
          ctx.lineTo(x, yOf(s.v[k - 1])); ctx.lineTo(x, yOf(s.v[k]));
        }
        ctx.lineTo(xOf(D.end, c.w), yOf(s.v[s.v.length - 1]));
        ctx.stroke();
      }
      ctx.setLineDash([]);
    }
    ctx.restore();
  }
  function valuesAt(t) {
    const out = ["t        " + fmt(t) + " s"];
    for (const name in D.util) {
      const s = D.util[name], k = stepAt(s.t, t);
      if (s.v.some(function (x) { return x > 0; })) out.push((name + "        ").slice(0, 16) + (k < 0 ? 0 : fmt(s.v[k])));
    }
    const k = stepAt(D.counts.t, t);
    for (const name of D.states) {
      const v = D.counts.v[name];
      if (v.some(function (x) { return x > 0; })) out.push((name + "          ").slice(0, 16) + (k < 0 ? 0 : fmt(v[k])));
    }
    return out.join("\n");
  }

  function drawAll() {
    drawTimeline();
    drawSteps("utilisation", D.util, false);
    drawSteps("counts", D.counts, true);
    document.getElementById("range").textContent =
      "showing " + fmt(view.t0) + " s to " + fmt(view.t1) + " s";
  }

  // -- interaction: hover, wheel zoom, drag to pan, double-click to reset -----------------
  let drag = null;
  for (const id of ["timeline", "utilisation", "counts"]) {
    const canvas = document.getElementById(id);
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      const rect = canvas.getBoundingClientRect(), w = canvas.clientWidth;
      const t = tOf(ev.clientX - rect.left, w), f = ev.deltaY < 0 ? 1 / 1.25 : 1.25;
      const t0 = t - (t - view.t0) * f, t1 = t + (view.t1 - t) * f;
      view = { t0: Math.max(full.t0, t0), t1: Math.min(full.t1, t1) };
      if (view.t1 - view.t0 < 1e-9) view.t1 = view.t0 + 1e-9;
      drawAll();
    }, { passive: false });
    canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, v: view, w: canvas.clientWidth }; });
    canvas.addEventListener("dblclick", function () { view = { t0: full.t0, t1: full.t1 }; drawAll(); });
    canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    canvas.addEventListener("mousemove", function (ev) {
      const rect = canvas.getBoundingClientRect(), x = ev.clientX - rect.left, y = ev.clientY - rect.top;
      let text = null;
      if (id === "timeline") { const i = barAt(x, y); if (i >= 0) text = describe(i); }
      else if (x >= LEFT) text = valuesAt(tOf(x, canvas.clientWidth));
      if (text === null) { tip.style.display = "none"; return; }
      tip.textContent = text; tip.style.display = "block";
      tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 10) + "px";
    });
  }
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    const dt = (ev.clientX - drag.x) / (drag.w - LEFT - RIGHT) * (drag.v.t1 - drag.v.t0);
    const span = drag.v.t1 - drag.v.t0;
    let t0 = Math.min(Math.max(full.t0, drag.v.t0 - dt), full.t1 - span);
    view = { t0: t0, t1: t0 + span };
    drawAll();
  });
  window.addEventListener("mouseup", function () { drag = null; });
  window.addEventListener("resize", drawAll);
  document.getElementById("reset").addEventListener("click", function () { view = { t0: full.t0, t1: full.t1 }; drawAll(); });

  // Where each bar is on screen, for scripts (and the tests) that point at one.
  window.matensembleReport = {
    bars: B.a.length,
    barBox: function (i) {
      const rect = tl.getBoundingClientRect(), a = B.a[i];
      const x0 = Math.max(LEFT, xOf(A.s[a], tl.clientWidth));
      const x1 = Math.min(tl.clientWidth - RIGHT, xOf(A.e[a], tl.clientWidth));
      if (x1 < x0) return null;
      return { x: rect.left + x0, y: rect.top + TOP + B.lo[i] * rowH,
               w: Math.max(1, x1 - x0), h: (B.hi[i] - B.lo[i] + 1) * rowH,
               task: D.tasks[A.task[a]], attempt: A.n[a] };
    },
  };
  drawAll();
  document.body.dataset.barsDrawn = tl.dataset.barsDrawn;
  document.body.dataset.ready = "1";
})();
