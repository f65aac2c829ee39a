/* The page of `slidenet train --live`: the curves grow, the pictures are redrawn.

   Every POLL ms it asks /api/progress for the steps after the last one it has; when the
   server has copied newer weights it asks /api/pictures (every PICTURES ms at most), and when
   an epoch has ended, /api/epoch. When training has finished and this page is the server's
   root, it reloads: the root is then the explainer of best.npz. body's data-step, data-epoch,
   data-pictures and data-epoch-view say what is shown (tests). */
"use strict";

(function () {
  const { $, el, fmt, call } = window.slidenet;
  const POLL = 1000;
  const PICTURES = 2500;
  const WAIT = 30;        // seconds a poll waits for its answer before it is shown as failed
  const COLOURS = { step: "#b8c2d0", loss: "#1d2433", val_loss: "#c0392b", accuracy: "#2f6fb3",
                    val_accuracy: "#c0392b" };

  let steps = [];           // [step, loss] of this run
  let last = 0;             // the last step we have
  let pictures = 0;         // weights version drawn
  let epochView = 0;        // epoch whose confusion matrix is drawn
  let picturesAt = 0;
  let stopped = false;

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
  }

  function drawCurves(progress) {
    const history = progress.history;
    const perEpoch = progress.steps_per_epoch || 1;
    const epochs = (key) => history.map((h) => [h.epoch * perEpoch, h[key]]);
    window.slidenet.chart($("chart-loss"), {
      title: "loss", x: "step", y: "loss",
      series: [{ name: "each step", points: steps, colour: COLOURS.step, width: 1 },
               { name: "train (epoch mean)", points: epochs("loss"), colour: COLOURS.loss, dots: true },
               { name: "validation", points: epochs("val_loss"), colour: COLOURS.val_loss, dots: true, dashed: true }],
      yMin: 0 });
    window.slidenet.chart($("chart-accuracy"), {
      title: "accuracy", x: "epoch", y: "accuracy",
      series: [{ name: "train", points: history.map((h) => [h.epoch, h.accuracy]), colour: COLOURS.accuracy, dots: true },
               { name: "validation", points: history.map((h) => [h.epoch, h.val_accuracy]), colour: COLOURS.val_accuracy, dots: true, dashed: true }],
      yMax: 1, legend: "bottom" });
  }

  function showStats(progress) {
    const history = progress.history;
    const lastEpoch = history[history.length - 1];
    $("stat-epoch").textContent = `${progress.epoch} / ${progress.epochs}`;
    $("stat-step").textContent = progress.steps_per_epoch
      ? `${progress.step} / ${progress.steps_per_epoch * progress.epochs}` : "-";
    $("stat-loss").textContent = steps.length ? fmt(steps[steps.length - 1][1], 4) : "-";
    $("stat-val").textContent = lastEpoch && lastEpoch.val_accuracy !== null
      ? `${(100 * lastEpoch.val_accuracy).toFixed(1)}%` : "-";
    $("stat-lr").textContent = progress.lr === null ? "-" : progress.lr.toExponential(2);
    $("stat-speed").textContent = progress.images_per_s ? Math.round(progress.images_per_s).toLocaleString("en-US") : "-";
    $("stat-left").textContent = progress.done ? "0 s" : duration(progress.seconds_left);
    const states = {
      starting: "starting: loading the data ...",
      training: `training: epoch ${Math.min(progress.epoch + 1, progress.epochs)} of ${progress.epochs}`,
      finished: `finished: ${progress.epoch} epochs`,
      stopped: "stopped",
    };
    $("live-state").textContent = states[progress.state] || progress.state;
    if (progress.settings && progress.settings.data) {
      const s = progress.settings;
      $("live-settings").textContent = `data ${s.data} · batch ${s.batch_size} · ${s.optimizer} ` +
        `lr ${s.lr} (${s.schedule}) · weight decay ${s.weight_decay} · loss ${s.loss} · ` +
        `seed ${s.seed} · out ${s.out}`;
    }
    document.body.dataset.step = progress.step;
    document.body.dataset.epoch = progress.epoch;
  }

  function topList(top) {
    return el("div", {}, ...top.map((t) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${(100 * t.probability).toFixed(1)}%`;
      return el("div", { class: "prob" }, el("span", { class: "name", text: t.name, title: t.name }),
        el("span", { class: "barbox" }, bar), el("span", { class: "mono", text: t.probability.toFixed(2) }));
    }));
  }

  function showPictures(answer) {
    if (!answer.version) return;
    const f = answer.filters;
    if (f) {
      const scale = f.shape[2] === 3 ? "in colour, each filter on its own scale"
        : `one scale, ${fmt(f.low, 3)} (blue) to ${fmt(f.high, 3)} (red)`;
      $("filters-body").replaceChildren(
        el("p", { class: "mono", text: `${f.layer} ${f.text}: ${f.shape[3]} filters of ` +
          `${f.shape[0]} x ${f.shape[1]} x ${f.shape[2]}; ${scale}` +
          (f.channel_shown === null ? "" : ` (input channel ${f.channel_shown} of each)`) }),
        el("img", { src: f.uri, class: "filters", id: "filters-image", alt: `${f.layer} filters` }));
    }
    $("samples-body").replaceChildren(...answer.samples.map((s) => {
      const wrong = s.top[0].name !== s.label;
      return el("div", { class: wrong ? "sample wide wrong" : "sample wide", "data-index": s.index },
        el("img", { src: s.uri, alt: `validation image ${s.index}` }),
        el("div", { class: "truth", text: `true: ${s.label}` }),
        el("div", { class: "verdict", text: `guess: ${s.top[0].name}` }),
        topList(s.top),
        s.maps ? el("div", { class: "note", text: `${s.maps.layer}, ${s.maps.channels} maps` }) : null,
        s.maps ? el("img", { src: s.maps.uri, class: "maps", alt: `${s.maps.layer} maps` }) : null);
    }));
    pictures = answer.version;
    document.body.dataset.pictures = pictures;
  }

  function showEpoch(view) {
    if (!view.epoch) return;
    const names = view.classes;
    const table = el("table", { class: "confusion" },
      el("tr", {}, el("th", { text: "true \\ guess" }), ...names.map((n) => el("th", { text: n }))),
      ...view.confusion.map((row, i) => {
        const total = Math.max(1, row.reduce((a, b) => a + b, 0));
        return el("tr", {}, el("th", { text: names[i] }), ...row.map((count, j) => {
          const cell = el("td", { text: String(count) });
          if (count) {
            const share = count / total;
            cell.style.background = `rgba(${i === j ? "47,111,179" : "192,57,43"},${(0.1 + 0.8 * share).toFixed(2)})`;
            if (share > 0.55) cell.style.color = "#fff";
          }
          return cell;
        }));
      }));
    $("confusion").replaceChildren(table);
    $("worst").replaceChildren(...view.worst.map((w) =>
      el("div", { class: w.predicted === w.label ? "sample" : "sample wrong", "data-index": w.index },
        el("img", { src: w.uri, alt: `validation image ${w.index}` }),
        el("div", { class: "truth", text: `true: ${w.label} (p = ${w.probability.toFixed(3)})` }),
        el("div", { class: "verdict", text: `guess: ${w.predicted}` }),
        topList(w.top))));
    $("epoch-status").textContent = `After epoch ${view.epoch}: ${(100 * view.accuracy).toFixed(1)}% of the ` +
      `validation images right. The confusion matrix (row: true class, column: the net's guess), ` +
      `and the ${view.worst.length} images, of the first ${view.pool}, whose true class gets the lowest probability.`;
    epochView = view.epoch;
    document.body.dataset.epochView = epochView;
  }

  // One poll: the progress, and the pictures or the epoch's view when they changed. True once
  // training is over (nothing will change any more).
  async function poll() {
    const progress = await call(`/api/progress?since=${last}`, { wait: WAIT });
    if (progress.steps.length) {
      steps = steps.concat(progress.steps);
      last = steps[steps.length - 1][0];
    }
    showStats(progress);
    drawCurves(progress);
    const now = Date.now();
    if (progress.pictures > pictures && now - picturesAt >= PICTURES) {
      picturesAt = now;
      showPictures(await call("/api/pictures", { wait: WAIT }));
    } else if (!progress.done && now - picturesAt >= 4 * PICTURES) {
      picturesAt = now;     // keep telling the server a page is watching
      showPictures(await call("/api/pictures", { wait: WAIT }));
    }
    if (progress.epoch_view > epochView) showEpoch(await call("/api/epoch", { wait: WAIT }));
    if (progress.done) {
      document.body.dataset.done = progress.state;
      if (progress.best) {
        const banner = $("live-done");
        banner.replaceChildren("Training has finished. ",
          el("a", { href: "/", text: `Explain ${progress.best}` }),
          ": draw an image, see every layer, click a unit.");
        banner.hidden = false;
        if (window.location.pathname === "/" && !stopped) {
          stopped = true;
          window.location.reload();
          return true;
        }
      }
      if (progress.pictures > pictures) showPictures(await call("/api/pictures", { wait: WAIT }));
      return true;
    }
    return false;
  }

  // Polls until training is over. A failed or unanswered request (any of the three) is shown
  // and the page polls again, more slowly: it never stops updating on one lost answer.
  async function tick() {
    try {
      if (await poll()) return;
    } catch (err) {
      $("live-state").textContent = err.message;
      setTimeout(tick, 3 * POLL);
      return;
    }
    setTimeout(tick, POLL);
  }

  tick();
})();
