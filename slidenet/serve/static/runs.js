/* `slidenet serve RUNS/`: the curves of every run overlaid, one colour each, and a table of
   each run's net and settings (the settings that differ between runs in bold). Reads /api/runs
   every REFRESH ms; body's data-runs counts the runs shown (tests). */
"use strict";

(function () {
  const { $, el, call } = window.slidenet;
  const REFRESH = 5000;
  const PALETTE = ["#2f6fb3", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d",
                   "#d35400", "#2c3e50", "#f1c40f"];
  const hidden = new Set();
  let last = null;

  const colour = (k) => PALETTE[k % PALETTE.length];

  function draw(answer) {
    const runs = answer.runs.map((run, k) => ({ ...run, colour: colour(k) }))
      .filter((run) => !hidden.has(run.name));
    const series = (key, dashed) => runs.map((run) => ({
      name: run.name, colour: run.colour, dashed, dots: true,
      points: run.history.map((h) => [h.epoch, h[key]]).filter((p) => p[1] !== null) }));
    const chart = window.slidenet.chart;
    chart($("chart-val"), { title: "validation accuracy", x: "epoch", y: "accuracy", series: series("val_accuracy", true), legend: "bottom" });
    chart($("chart-train-loss"), { title: "training loss (epoch mean)", x: "epoch", y: "loss", series: series("loss", false), yMin: 0 });
    chart($("chart-val-loss"), { title: "validation loss", x: "epoch", y: "loss", series: series("val_loss", true), yMin: 0 });
    chart($("chart-lr"), { title: "learning rate (at the end of each epoch)", x: "epoch", y: "lr", series: series("lr", false), yMin: 0 });
  }

  function table(answer) {
    const keys = [...new Set(answer.runs.flatMap((run) => Object.keys(run.settings)))];
    const differs = (key) => new Set(answer.runs.map((run) => JSON.stringify(run.settings[key]))).size > 1;
    const show = (value) => (value === undefined ? "-" : typeof value === "object" ? JSON.stringify(value) : String(value));
    const head = el("tr", {}, el("th", { text: "" }), el("th", { text: "run" }), el("th", { text: "pattern" }),
      el("th", { text: "epochs" }), el("th", { text: "best val acc" }),
      ...keys.map((key) => el("th", { text: key })));
    const rows = answer.runs.map((run, k) => {
      const box = el("input", { type: "checkbox", checked: !hidden.has(run.name), title: "show this run" });
      box.addEventListener("change", () => {
        if (box.checked) hidden.delete(run.name);
        else hidden.add(run.name);
        draw(last);
      });
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour(k);
      return el("tr", { "data-run": run.name }, el("td", {}, box),
        el("td", {}, swatch, el("b", { text: run.name })),
        el("td", {}, el("code", { text: run.pattern || "(no model file)" })),
        el("td", { class: "num", text: String(run.history.length) }),
        el("td", { class: "num", text: run.best_val_accuracy === null ? "-" : `${(100 * run.best_val_accuracy).toFixed(1)}%` }),
        ...keys.map((key) => el("td", { class: differs(key) ? "differs" : "", text: show(run.settings[key]) })));
    });
    $("runs-table").replaceChildren(head, ...rows);
    $("runs-skipped").replaceChildren(...answer.skipped.map((s) => el("li", { text: `${s.name}: ${s.why}` })));
  }

  async function refresh() {
    try {
      last = await call("/api/runs", { wait: 30 });     // a lost answer must not stop the page
      draw(last);
      table(last);
      document.body.dataset.runs = last.runs.length;
    } catch (err) {
      $("runs-skipped").replaceChildren(el("li", { class: "error", text: err.message }));
    }
    setTimeout(refresh, REFRESH);
  }

  refresh();
})();
