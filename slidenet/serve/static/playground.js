/* The pattern playground (templates/_playground.html): as the pattern is typed, POST it to
   /api/summary and show every layer's shape, formulas, parameters and receptive field, or
   slidenet's error with a caret under the place at fault; and the `slidenet train` command
   that trains the net, with a button that copies it.

   At most one request is on its way; whatever was typed meanwhile is sent when it is back, so
   the last keystroke is always shown. body's data-summarised counts the answers shown (tests). */
"use strict";

(function () {
  const { $, el, call } = window.slidenet;
  const form = $("pattern-form");
  if (!form) return;
  const text = $("pattern-text");
  let busy = false;         // a request is on its way
  let dirty = true;         // typed since the last request was sent
  let shown = 0;

  const thousands = (n) => Number(n).toLocaleString("en-US");
  const sets = () => $("pattern-set").value.split(/[\s,]+/).filter((s) => s);

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let k = 0;
    while (n >= 1024 && k < units.length - 1) {
      n /= 1024;
      k++;
    }
    return k ? `${n.toFixed(1)} ${units[k]}` : `${n} B`;
  }

  /* The shell's single quotes around `value`, a ' inside written as '\'' . */
  const quoted = (value) => `'${value.replace(/'/g, "'\\''")}'`;

  function command() {
    const parts = ["slidenet train --pattern", quoted(text.value.trim().replace(/\s+/g, " "))];
    for (const binding of sets()) parts.push("--set", binding);
    if ($("pattern-skip").checked) parts.push("--skip-optional");
    const data = $("pattern-data").value.trim();
    if (data && data !== "mnist5k") parts.push("--data", quoted(data));
    return parts.join(" ");
  }

  function showSummary(answer) {
    const head = ["layer", "pattern", "output", "parameters", "output size (N + 2P - F) / S + 1",
                  "receptive field"];
    const rows = answer.layers.map((layer) => {
      const [h, w] = layer.size_formulas.length ? layer.size_formulas : ["", ""];
      const size = h === w ? h : `h: ${h}; w: ${w}`;
      return el("tr", { "data-layer": layer.name },
        el("td", { text: layer.name }), el("td", {}, el("code", { text: layer.text })),
        el("td", { class: "mono", text: layer.output_shape.join(" x ") }),
        el("td", { class: "mono", text: layer.params_formula || "-" }),
        el("td", { class: "mono", text: size || "-" }),
        el("td", { class: "mono", text: layer.receptive_field.join(" x ") +
                                         (layer.receptive_field_capped ? "*" : "") }));
    });
    const notes = answer.layers.flatMap((layer) => layer.notes.map((note) =>
      el("li", { text: `${layer.name} ${layer.text}: ${note}` })));
    const table = el("table", { class: "summary" },
      el("tr", {}, ...head.map((t) => el("th", { text: t }))), ...rows);
    $("pattern-summary").replaceChildren(
      ...(notes.length ? [table, el("ul", { class: "note" }, ...notes)] : [table]));
    $("pattern-totals").textContent =
      `total parameters ${thousands(answer.total_params)} ` +
      `(${bytes(answer.total_params * 4)} at float32) · ` +
      `${thousands(answer.total_madds)} multiply-adds per image · ` +
      `${bytes(answer.total_activation_bytes)} of activations per image`;
    $("pattern-error").hidden = true;
  }

  function showError(err) {
    const box = $("pattern-error");
    const body = err.body || {};
    if (body.column === null || body.column === undefined) {
      box.replaceChildren(el("div", { class: "message", text: err.message }));
    } else {
      // The message (wrapped), then the pattern on one line and a caret under the column at
      // fault, as the command line prints them.
      const line = text.value.replace(/\s/g, " ");
      const column = Math.max(0, Math.min(body.column, line.length));
      box.replaceChildren(el("div", { class: "message", text: body.message }),
                          el("pre", { text: `  ${line}\n  ${" ".repeat(column)}^` }));
      box.dataset.column = column;
    }
    box.hidden = false;
    $("pattern-summary").replaceChildren();
    $("pattern-totals").textContent = "";
  }

  async function send() {
    if (busy || !dirty) return;
    dirty = false;
    busy = true;
    const query = new URLSearchParams();
    for (const binding of sets()) query.append("set", binding);
    if ($("pattern-skip").checked) query.append("skip_optional", "1");
    try {
      showSummary(await call(`/api/summary?${query}`, { method: "POST", body: text.value }));
      document.body.dataset.patternOk = "1";
    } catch (err) {
      showError(err);
      document.body.dataset.patternOk = "0";
    }
    $("train-command").textContent = command();
    busy = false;
    document.body.dataset.summarised = ++shown;
    send();                 // whatever was typed meanwhile
  }

  function changed() {
    dirty = true;
    send();
  }

  form.addEventListener("input", changed);
  form.addEventListener("submit", (event) => event.preventDefault());
  $("copy-command").addEventListener("click", async () => {
    const line = command();
    let done = false;
    try {
      await navigator.clipboard.writeText(line);
      done = true;
    } catch (err) {
      // No clipboard permission: select the command so that Ctrl-C copies it.
      const range = document.createRange();
      range.selectNodeContents($("train-command"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
    $("copy-status").textContent = done ? "copied" : "selected: press Ctrl-C to copy";
  });
  send();
})();
