/* Line charts as SVG, for the live page and the runs side by side: window.slidenet.chart.

   chart(box, {title, x, y, series: [{name, points: [[x, y], ...], colour, width, dashed,
   dots}], yMin, yMax, legend}) draws into the element `box`, replacing what it held. Axes get
   about five round ticks each; a legend names every series, at the top right, or at the
   bottom right with legend: "bottom" (for curves that rise). */
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 520;
  const HEIGHT = 300;
  const MARGIN = { left: 56, right: 14, top: 28, bottom: 40 };

  function svg(tag, attributes, text) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ticks(low, high, count = 5) {
    if (!(high > low)) return [low];
    const raw = (high - low) / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const first = Math.ceil(low / step) * step;
    const out = [];
    for (let v = first; v <= high + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function label(value) {
    const size = Math.abs(value);
    if (size >= 10000) return value.toLocaleString("en-US");
    return String(Number(value.toPrecision(4)));
  }

  function chart(box, spec) {
    const all = spec.series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
    const image = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart-svg",
                               role: "img", "aria-label": spec.title });
    image.append(svg("text", { x: MARGIN.left, y: 18, class: "chart-title" }, spec.title));
    const plotW = WIDTH - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    let [x0, x1] = all.length ? [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))] : [0, 1];
    let [y0, y1] = all.length ? [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))] : [0, 1];
    if (spec.yMin !== undefined) y0 = Math.min(y0, spec.yMin);
    if (spec.yMax !== undefined) y1 = Math.max(y1, spec.yMax);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    const X = (v) => MARGIN.left + (v - x0) / (x1 - x0) * plotW;
    const Y = (v) => MARGIN.top + (1 - (v - y0) / (y1 - y0)) * plotH;
    for (const t of ticks(y0, y1)) {
      image.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: Y(t), y2: Y(t), class: "grid" }));
      image.append(svg("text", { x: MARGIN.left - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, label(t)));
    }
    for (const t of ticks(x0, x1)) {
      image.append(svg("text", { x: X(t), y: HEIGHT - MARGIN.bottom + 16, class: "tick", "text-anchor": "middle" }, label(t)));
    }
    image.append(svg("text", { x: MARGIN.left + plotW / 2, y: HEIGHT - 6, class: "axis", "text-anchor": "middle" }, spec.x));
    image.append(svg("text", { x: 12, y: MARGIN.top + plotH / 2, class: "axis", "text-anchor": "middle",
                               transform: `rotate(-90 12 ${MARGIN.top + plotH / 2})` }, spec.y));
    const legend = [];
    spec.series.forEach((s) => {
      const points = s.points.filter((p) => Number.isFinite(p[1]));
      if (!points.length) return;
      const line = svg("polyline", {
        points: points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "),
        fill: "none", stroke: s.colour, "stroke-width": s.width || 2,
        "data-series": s.name, "data-count": points.length });
      if (s.dashed) line.setAttribute("stroke-dasharray", "6 4");
      image.append(line);
      if (s.dots) {
        for (const p of points) image.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: s.colour }));
      }
      legend.push(s);
    });
    legend.forEach((s, k) => {
      const y = spec.legend === "bottom"
        ? MARGIN.top + plotH - 6 - 16 * (legend.length - 1 - k)
        : MARGIN.top + 6 + 16 * k;
      const x = WIDTH - MARGIN.right - 150;
      const mark = svg("line", { x1: x, x2: x + 18, y1: y, y2: y, stroke: s.colour, "stroke-width": 3 });
      if (s.dashed) mark.setAttribute("stroke-dasharray", "5 3");
      image.append(mark, svg("text", { x: x + 24, y: y + 4, class: "legend" }, s.name));
    });
    box.replaceChildren(image);
  }

  window.slidenet.chart = chart;
})();
