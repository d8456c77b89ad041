// A small line chart on <canvas> (no library, nothing fetched): series of [x, y] points.
"use strict";
const COLORS = ["#175cd3", "#dc6803", "#067647", "#b42318", "#7a5af8"];

function drawChart(canvas, title, series) {
  // series: [{label, points: [[x, y], ...]}]; a series of one point is drawn as a dot.
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  ctx.fillStyle = "#1d2330"; ctx.font = "12px sans-serif"; ctx.fillText(title, pad, 14);
  if (!pts.length) { ctx.fillText("no data yet", pad, H / 2); return; }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; } if (y0 === y1) { y0 -= 1e-6 + Math.abs(y0) * 0.05; y1 += 1e-6 + Math.abs(y1) * 0.05; }
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (W - pad - 10);
  const sy = (y) => H - 20 - ((y - y0) / (y1 - y0)) * (H - 44);
  ctx.strokeStyle = "#dde1e8"; ctx.beginPath(); ctx.moveTo(pad, 24); ctx.lineTo(pad, H - 20); ctx.lineTo(W - 10, H - 20); ctx.stroke();
  ctx.fillStyle = "#6b7385";
  ctx.fillText(y1.toPrecision(3), 2, 30); ctx.fillText(y0.toPrecision(3), 2, H - 22);
  ctx.fillText(String(x0), pad, H - 6); ctx.fillText(String(x1), W - 40, H - 6);
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length], good = s.points.filter((p) => Number.isFinite(p[1]));
    ctx.strokeStyle = c; ctx.fillStyle = c; ctx.beginPath();
    good.forEach((p, j) => (j ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.stroke();
    if (good.length === 1) { ctx.beginPath(); ctx.arc(sx(good[0][0]), sy(good[0][1]), 3, 0, 7); ctx.fill(); }
    if (series.length > 1) ctx.fillText(s.label, W - 160, 14 + 14 * i);
  });
  canvas.dataset.points = String(pts.length); // tests read how many points are drawn
}
