/* The sliding filter of every slidenet page (templates/_slide.html): an F x F filter over an
   N x N input with padding P at stride S, from GET /api/slide, stepped position by position. */
"use strict";

(function () {
  const { $, el, call } = window.slidenet;
  if (!$("slide-form")) return;

  // ---- sliding a filter ----

  const slideForm = $("slide-form");
  let slide = null;
  let step = 0;
  let timer = null;
  // Each change of the form asks again, and answers can come back out of order: only the
  // latest question's answer is shown. The form's data-answered counts the answers back so far,
  // shown or dropped (for tests).
  let asked = 0;
  let answered = 0;

  function stopPlaying() {
    if (timer) clearInterval(timer);
    timer = null;
    $("slide-play").textContent = "play";
  }

  function grid(table, matrix, classOf) {
    table.replaceChildren(...matrix.map((line, r) => el("tr", {},
      ...line.map((value, c) => el("td", { class: classOf ? classOf(r, c) : "", text: String(value) })))));
  }

  async function loadSlide() {
    stopPlaying();
    const query = new URLSearchParams(new FormData(slideForm));
    const question = ++asked;
    let answer = null;
    let failure = null;
    try {
      answer = await call(`/api/slide?${query}`);
    } catch (err) {
      failure = err;
    }
    slideForm.dataset.answered = ++answered;
    if (question !== asked) return;             // a later change asked again meanwhile
    if (failure) {
      slide = null;
      $("slide-error").textContent = failure.message;
      $("slide-error").hidden = false;
      $("slide-view").hidden = true;
      $("slide-formula").textContent = "";
      return;
    }
    slide = answer;
    $("slide-error").hidden = true;
    $("slide-view").hidden = false;
    $("slide-formula").textContent =
      `output size (N + 2P - F) / S + 1 = ${slide.formula}  \u2192  ${slide.out} x ${slide.out}`;
    const m = slide.n + 2 * slide.p;
    const padded = Array.from({ length: m }, (_, r) => Array.from({ length: m }, (_, c) => {
      const [i, j] = [r - slide.p, c - slide.p];
      return i >= 0 && j >= 0 && i < slide.n && j < slide.n ? slide.x[i][j] : 0;
    }));
    slide.padded = padded;
    grid($("slide-input"), padded, (r, c) => (r < slide.p || c < slide.p || r >= slide.p + slide.n
      || c >= slide.p + slide.n ? "pad" : ""));
    grid($("slide-filter"), slide.w, () => "filter");
    grid($("slide-output"), slide.y);
    showStep(0);
  }

  function showStep(k) {
    const { out, s, f, padded, w, y } = slide;
    step = Math.max(0, Math.min(out * out - 1, k));
    const [i, j] = [Math.floor(step / out), step % out];
    const [r0, c0] = [i * s, j * s];
    [...$("slide-input").rows].forEach((tr, r) => [...tr.cells].forEach((td, c) =>
      td.classList.toggle("window", r >= r0 && r < r0 + f && c >= c0 && c < c0 + f)));
    [...$("slide-output").rows].forEach((tr, r) => [...tr.cells].forEach((td, c) => {
      const index = r * out + c;
      td.className = index < step ? "done" : index === step ? "now" : "empty";
    }));
    const terms = [];
    for (let a = 0; a < f; a++) {
      for (let b = 0; b < f; b++) terms.push(`${padded[r0 + a][c0 + b]}*${w[a][b]}`);
    }
    const sum = terms.length <= 25 ? `${terms.join(" + ")} = ${y[i][j]}` : `sum of the ${terms.length} products = ${y[i][j]}`;
    $("slide-caption").textContent =
      `output (${i}, ${j}) \u2190 rows ${r0}..${r0 + f - 1}, columns ${c0}..${c0 + f - 1} of the padded input: ${sum}`;
    $("slide-step").textContent = `position ${step + 1} of ${out * out}`;
  }

  slideForm.addEventListener("input", loadSlide);
  slideForm.addEventListener("submit", (event) => event.preventDefault());
  $("slide-first").addEventListener("click", () => { stopPlaying(); showStep(0); });
  $("slide-prev").addEventListener("click", () => { stopPlaying(); showStep(step - 1); });
  $("slide-next").addEventListener("click", () => { stopPlaying(); showStep(step + 1); });
  $("slide-last").addEventListener("click", () => { stopPlaying(); showStep(Infinity); });
  $("slide-play").addEventListener("click", () => {
    if (timer) {
      stopPlaying();
      return;
    }
    if (step >= slide.out * slide.out - 1) showStep(0);
    $("slide-play").textContent = "pause";
    timer = setInterval(() => {
      if (step >= slide.out * slide.out - 1) stopPlaying();
      else showStep(step + 1);
    }, 450);
  });

  loadSlide();
})();
