/* The live page of `slidenet serve`: draw or drop an image, every layer's maps, one unit's
   arithmetic, a sliding filter, the top patches of a channel.

   Plain JavaScript with no build step, and nothing loaded from elsewhere: every number comes
   from this page's own server (the /api endpoints of docs/serve.md). Layer outputs arrive as
   base64 float32 arrays, (D, H, W) for a volume, and are drawn on canvases here. */
"use strict";

(function () {
  const boot = JSON.parse(document.getElementById("boot").textContent);
  const model = boot.model;
  const [H, W, D] = model.input_shape;
  const TILE = 56;            // CSS pixels of a map tile's longer side, the same in every layer
  const CELL = 14;            // CSS pixels of one cell of a vector's strip
  const STRIP_COLUMNS = 32;   // cells per row of a strip
  const MAX_TILES = 64;       // channels drawn per layer
  const MAX_TABLES = 32;      // input channels whose window a CONV unit's explanation lists
  const CELL_DIGITS = 3;      // decimals of the numbers in its tables
  // A model with more classes than this (ImageNet's 1,000) lists its most probable ones only,
  // most probable first, and names its classes in short: a list of all would be pages long.
  const MAX_LISTED = 10;
  // An image whose mean brightness (0..1) is this far from the training images' is more likely
  // drawn the other way round (dark on light) than just dim or bright: `slidenet predict`'s rule.
  const OPPOSITE = 0.4;
  // Seconds an image's answer (/api/look, /api/unit) may take before the page stops waiting
  // and says so: ample for a server compiling its kernels on a busy machine, and the page is
  // never left waiting for good on an answer that will not come.
  const ANSWER_WAIT = 60;
  const scores = model.layers[model.layers.length - 1];   // the last layer: one score a class
  // Colour ramps, from the low end to the high end of a layer's scale.
  const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130],
                     [178, 24, 43]];
  const SEQUENTIAL = [[12, 7, 38], [59, 41, 120], [33, 120, 142], [72, 180, 110],
                      [240, 225, 60]];

  const { $, el, fmt, call } = window.slidenet;

  function floats(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function ramp(stops, t) {
    const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(x));
    const f = x - k;
    return stops[k].map((v, m) => Math.round(v + (stops[k + 1][m] - v) * f));
  }

  /* One colour scale per layer: around zero when it has negative numbers, else from zero. */
  function colourScale(low, high) {
    if (low < 0) {
      const limit = Math.max(-low, high, 1e-12);
      return { text: `${fmt(-limit, 3)} (blue) to ${fmt(limit, 3)} (red)`,
               colour: (v) => ramp(DIVERGING, (v / limit + 1) / 2) };
    }
    const limit = Math.max(high, 1e-12);
    return { text: `0 (dark) to ${fmt(limit, 3)} (yellow)`,
             colour: (v) => ramp(SEQUENTIAL, v / limit) };
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // ---- the image ----

  let image = null;         // the Blob (PNG or JPEG bytes) the page shows now
  let shown = 0;            // images shown so far (document.body's data-shown, for tests)
  let outputs = {};         // layer name -> {shape, values (Float32Array), scale}
  let inputPixels = null;   // the image as the net sees it: (H, W, D) floats 0..255

  const inverted = () => $("invert").checked;

  async function analyse(blob) {
    const answer = await call(`/api/look${inverted() ? "?invert=1" : ""}`,
                              { method: "POST", body: blob, wait: ANSWER_WAIT });
    image = blob;
    showError("");
    showProbabilities(answer.classes, answer.probabilities);
    inputPixels = floats(answer.input);
    paintPixels($("seen"), inputPixels);
    showHint(inputPixels);
    showLayers(answer.layers);
    if (picked) await explainUnit();
    document.body.dataset.shown = ++shown;
  }

  /* The CLI's --invert hint: an image far brighter (or darker) than the training images. */
  function showHint(pixels) {
    let total = 0;
    for (const v of pixels) total += v;
    const mean = total / pixels.length / 255;
    const hint = $("hint");
    const far = Math.abs(mean - model.brightness) > OPPOSITE;
    hint.hidden = !far;
    if (!far) return;
    const light = (v) => (v > 0.5 ? "light" : "dark");
    hint.textContent = inverted()
      ? `Inverted, this image is mostly ${light(mean)} (mean ${mean.toFixed(2)}) but the ` +
        `training images are mostly ${light(model.brightness)} (mean ` +
        `${model.brightness.toFixed(2)}): untick invert.`
      : `This image is mostly ${light(mean)} (mean ${mean.toFixed(2)}) but the training ` +
        `images are mostly ${light(model.brightness)} (mean ${model.brightness.toFixed(2)}); ` +
        `if it is drawn the other way round, tick invert (as slidenet predict --invert).`;
  }

  /* A new image: nothing of the last one's stays on the page (the hovered number, the picked
     unit and its receptive field, the drawing). */
  function forget() {
    picked = null;
    $("hover").textContent = "";
    $("field").hidden = true;
    document.querySelectorAll(".picked").forEach((node) => node.classList.remove("picked"));
    $("unit-body").replaceChildren(el("p", { class: "note", text: UNIT_NOTE }));
    for (const key of ["layer", "row", "col", "channel"]) delete $("unit-body").dataset[key];
  }

  async function upload(file) {
    if (!file) return;
    forget();
    if (clearDrawing) clearDrawing();
    try {
      await analyse(file);
    } catch (err) {
      showError(`${file.name}: ${err.message}`);
    }
  }

  $("invert").addEventListener("change", async () => {
    if (!image) return;
    try {
      await analyse(image);
    } catch (err) {
      showError(err.message);
    }
  });

  function paintPixels(canvas, pixels) {
    const context = canvas.getContext("2d");
    const picture = context.createImageData(W, H);
    for (let k = 0; k < H * W; k++) {
      const r = pixels[k * D];
      const g = D === 3 ? pixels[k * D + 1] : r;
      const b = D === 3 ? pixels[k * D + 2] : r;
      picture.data.set([r, g, b, 255], 4 * k);
    }
    context.putImageData(picture, 0, 0);
  }

  /* Every class's probability in the model's order; with more than MAX_LISTED classes, the
     MAX_LISTED most probable, most probable first, and a note saying so. */
  function showProbabilities(classes, probabilities) {
    const best = probabilities.indexOf(Math.max(...probabilities));
    const many = classes.length > MAX_LISTED;
    const order = classes.map((_, c) => c);
    if (many) order.sort((a, b) => probabilities[b] - probabilities[a] || a - b);
    const rows = order.slice(0, many ? MAX_LISTED : order.length).map((c) => {
      const name = classes[c];
      const bar = el("span", { class: "bar" });
      bar.style.width = `${(100 * probabilities[c]).toFixed(1)}%`;
      return el("div", { class: c === best ? "prob best" : "prob", "data-class": name },
        el("span", { class: "name", text: name, title: name }),
        el("span", { class: "barbox" }, bar),
        el("span", { class: "mono value", text: probabilities[c].toFixed(3) }));
    });
    if (many) {
      rows.push(el("p", { class: "note listed", text: `the ${MAX_LISTED} most probable of ` +
        `${classes.length.toLocaleString("en")} classes` }));
    }
    $("probs").replaceChildren(...rows);
  }

  /* The class names in order, in short when there are many: "a, b, c, ..., z". */
  function classList(classes) {
    if (classes.length <= 2 * MAX_LISTED) return classes.join(", ");
    return `${classes.slice(0, 3).join(", ")}, ..., ${classes[classes.length - 1]}`;
  }

  const drop = $("drop");
  $("file").addEventListener("change", (event) => upload(event.target.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });

  // ---- drawing (single-channel models) ----

  const board = $("draw");
  let clearDrawing = null;  // blanks the board without sending it (a file replaces the drawing)
  if (board) {
    const context = board.getContext("2d");
    let last = null;        // the pointer's last point while it is down
    let dirty = false;      // drawn since the last request was sent
    let busy = false;       // a request is on its way: at most one at a time

    const blank = () => {
      context.fillStyle = "#000";
      context.fillRect(0, 0, board.width, board.height);
    };
    const at = (event) => {
      const box = board.getBoundingClientRect();
      return [(event.clientX - box.left) * board.width / box.width,
              (event.clientY - box.top) * board.height / box.height];
    };
    const width = () => Number($("brush").value);
    /* The board as the bytes of a PNG file, encoded now. Not canvas.toBlob: Chromium leaves
       that encoding to the page's idle time, and on a busy machine the blob can come seconds
       later, the page saying "drawing" all the while. */
    const png = () => {
      const url = board.toDataURL("image/png");
      const text = atob(url.slice(url.indexOf(",") + 1));
      const bytes = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
      return new Blob([bytes], { type: "image/png" });
    };
    const send = async () => {
      // data-drawing: "1" while strokes wait for their answer, "0" once all are shown (or
      // their request failed, and the error line says why).
      document.body.dataset.drawing = busy || dirty ? "1" : "0";
      if (busy || !dirty) return;
      dirty = false;
      busy = true;
      try {
        await analyse(png());
      } catch (err) {
        showError(err.message);
      } finally {
        busy = false;
      }
      send();               // whatever was drawn meanwhile
    };
    const line = (from, to) => {
      context.strokeStyle = "#fff";
      context.lineWidth = width();
      context.lineCap = "round";
      context.lineJoin = "round";
      context.beginPath();
      context.moveTo(...from);
      context.lineTo(...to);
      context.stroke();
      dirty = true;
      send();
    };

    blank();
    clearDrawing = blank;
    board.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      board.setPointerCapture(event.pointerId);
      last = at(event);
      context.fillStyle = "#fff";
      context.beginPath();
      context.arc(last[0], last[1], width() / 2, 0, 2 * Math.PI);
      context.fill();
      dirty = true;
      send();
    });
    board.addEventListener("pointermove", (event) => {
      if (!last) return;
      const point = at(event);
      line(last, point);
      last = point;
    });
    const lift = () => {
      last = null;
      send();
    };
    board.addEventListener("pointerup", lift);
    board.addEventListener("pointercancel", lift);
    $("clear").addEventListener("click", () => {
      blank();
      forget();
      dirty = true;
      send();
    });
  }

  // ---- every layer ----

  const rows = {};          // layer name -> {layer, tiles, strip, columns, scale}

  function tilePosition(canvas, event, height, width) {
    const box = canvas.getBoundingClientRect();
    const clamp = (v, n) => Math.min(n - 1, Math.max(0, Math.floor(v * n)));
    return [clamp((event.clientY - box.top) / box.height, height),
            clamp((event.clientX - box.left) / box.width, width)];
  }

  function stripUnit(row, event) {
    const box = row.strip.getBoundingClientRect();
    const r = Math.floor((event.clientY - box.top) / box.height * row.strip.height);
    const c = Math.floor((event.clientX - box.left) / box.width * row.columns);
    const unit = r * row.columns + c;
    return unit < row.layer.output_shape[0] ? unit : null;
  }

  /* How a unit is called: "channel 2 at (1, 3)", "unit 5", or the last layer's "score of
     class 7". */
  function unitName(layer, r, c, channel) {
    if (layer.spatial) return `channel ${channel} at (${r}, ${c})`;
    return layer === scores ? `score of class ${model.classes[channel]}` : `unit ${channel}`;
  }

  function hover(layer, r, c, channel) {
    const out = outputs[layer.name];
    if (!out) return;
    const [h, w] = out.shape;
    const value = layer.spatial ? out.values[(channel * h + r) * w + c] : out.values[channel];
    $("hover").textContent = `${layer.name} ${unitName(layer, r, c, channel)}: ${fmt(value)}`;
  }

  function buildLayers() {
    const maps = $("maps");
    for (const layer of model.layers) {
      const shape = layer.output_shape;
      const scale = el("span", { class: "scale" });
      const head = el("div", { class: "layer-head" }, el("b", { text: layer.name }), " ",
        el("code", { text: layer.text }), " \u2192 ",
        el("span", { class: "volume", text: shape.join(" x ") }), scale);
      const body = el("div", { class: "tiles" });
      const row = { layer, tiles: [], strip: null, columns: 0, scale };
      if (layer.spatial) {
        const [h, w, d] = shape;
        const size = TILE / Math.max(h, w);
        for (let c = 0; c < Math.min(d, MAX_TILES); c++) {
          const tile = el("canvas", { class: "tile", width: w, height: h,
                                      title: `${layer.name} channel ${c}`, "data-channel": c });
          tile.style.width = `${w * size}px`;
          tile.style.height = `${h * size}px`;
          tile.addEventListener("click", (event) => pick(layer, ...tilePosition(tile, event, h, w), c));
          tile.addEventListener("mousemove", (event) => hover(layer, ...tilePosition(tile, event, h, w), c));
          body.append(tile);
          row.tiles.push(tile);
        }
        if (d > MAX_TILES) body.append(el("span", { class: "note", text: `the first ${MAX_TILES} of ${d} channels` }));
      } else {
        const n = shape[0];
        row.columns = Math.min(n, STRIP_COLUMNS);
        const strip = el("canvas", { class: "strip", width: row.columns,
                                     height: Math.ceil(n / row.columns),
                                     title: layer === scores ? `${layer.name}: one score a class`
                                       : layer.name });
        // The height follows from the width (CSS height: auto), so a narrow screen shrinks it.
        strip.style.width = `${row.columns * CELL}px`;
        strip.addEventListener("click", (event) => {
          const unit = stripUnit(row, event);
          if (unit !== null) pick(layer, 0, 0, unit);
        });
        strip.addEventListener("mousemove", (event) => {
          const unit = stripUnit(row, event);
          if (unit !== null) hover(layer, 0, 0, unit);
        });
        body.append(strip);
        row.strip = strip;
        if (layer === scores) {
          body.append(el("p", { class: "note classes", text: "the score of each class, in " +
            `order: ${classList(model.classes)}` }));
        }
      }
      rows[layer.name] = row;
      maps.append(el("div", { class: "layer", id: `layer-${layer.name}`, "data-layer": layer.name },
                     head, body));
    }
  }

  function paint(canvas, values, offset, count, colour) {
    const context = canvas.getContext("2d");
    const picture = context.createImageData(canvas.width, canvas.height);
    for (let k = 0; k < canvas.width * canvas.height; k++) {
      const rgb = k < count ? colour(values[offset + k]) : [232, 232, 232];
      picture.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * k);
    }
    context.putImageData(picture, 0, 0);
  }

  function showLayers(layers) {
    outputs = {};
    for (const answer of layers) {
      const row = rows[answer.name];
      const values = floats(answer.data);
      const scale = colourScale(answer.low, answer.high);
      outputs[answer.name] = { shape: answer.shape, values, scale };
      row.scale.textContent = `scale ${scale.text}`;
      if (row.layer.spatial) {
        const [h, w] = answer.shape;
        row.tiles.forEach((tile, c) => paint(tile, values, c * h * w, h * w, scale.colour));
      } else {
        paint(row.strip, values, 0, values.length, scale.colour);
      }
    }
  }

  // ---- one unit ----

  let picked = null;        // {layer, row, col, channel}
  const UNIT_NOTE = $("unit-body").textContent;

  async function pick(layer, row, col, channel) {
    if (!image) {
      showError("draw or drop an image first: the units' numbers come from it");
      return;
    }
    picked = { layer, row, col, channel };
    document.querySelectorAll(".picked").forEach((node) => node.classList.remove("picked"));
    const target = layer.spatial ? rows[layer.name].tiles[channel] : rows[layer.name].strip;
    if (target) target.classList.add("picked");
    if (layer.spatial) {
      const form = $("patches-form");
      if ([...form.layer.options].some((option) => option.value === layer.name)) {
        form.layer.value = layer.name;
        form.channel.value = channel;
      }
    }
    await explainUnit();
    $("unit").scrollIntoView({ block: "start" });
  }

  async function explainUnit() {
    const { layer, row, col, channel } = picked;
    const query = new URLSearchParams({ layer: layer.name, row, col, channel });
    if (inverted()) query.set("invert", "1");
    try {
      showUnit(layer, await call(`/api/unit?${query}`,
                                 { method: "POST", body: image, wait: ANSWER_WAIT }));
    } catch (err) {
      showError(err.message);
    }
  }

  function placeField(box, field) {
    const [r0, r1] = field.rows;
    const [c0, c1] = field.cols;
    const top = Math.max(r0, 0);
    const left = Math.max(c0, 0);
    box.style.top = `${100 * top / H}%`;
    box.style.left = `${100 * left / W}%`;
    box.style.height = `${100 * (Math.min(r1, H) - top) / H}%`;
    box.style.width = `${100 * (Math.min(c1, W) - left) / W}%`;
    box.classList.toggle("past", r0 < 0 || c0 < 0 || r1 > H || c1 > W);
    box.hidden = false;
  }

  function cells(matrix, outside, winner) {
    return el("table", { class: "cells" }, ...matrix.map((line, r) => el("tr", {},
      ...line.map((value, c) => el("td", {
        class: outside && outside[r][c] ? "pad"
          : winner && winner[0] === r && winner[1] === c ? "win" : "",
        text: fmt(value, CELL_DIGITS) })))));
  }

  const labelled = (title, node) => el("div", {}, el("h4", { text: title }), node);
  const span = (a, b) => `${a}..${b - 1}`;

  function sums(lines) {
    return el("div", { class: "sums" }, ...lines.map((parts) => el("p", {}, ...parts)));
  }

  function number(id, value, bold) {
    return el(bold ? "b" : "span", { id, text: fmt(value) });
  }

  function explainDot(ex, answer, inputName) {
    const depth = ex.window.length;
    const [fh, fw] = [ex.window[0].length, ex.window[0][0].length];
    const shown = Math.min(depth, MAX_TABLES);
    const blocks = el("div", { class: "explained dot" });
    for (let d = 0; d < shown; d++) {
      blocks.append(el("div", { class: "triple", "data-channel": d },
        labelled(`${inputName} channel ${d}`, cells(ex.window[d], ex.outside)),
        el("span", { class: "op", text: "\u00d7" }),
        labelled(`filter ${ex.channel}, depth ${d}`, cells(ex.filter[d])),
        el("span", { class: "op", text: "=" }),
        labelled("products", cells(ex.products[d], ex.outside))));
    }
    return [
      el("p", { text: `Filter ${ex.channel} (${fh} x ${fw} x ${depth}) over the window at rows ` +
        `${span(...ex.rows)}, columns ${span(...ex.cols)} of ${inputName}, through ` +
        (depth === 1 ? "its one channel" : `all ${depth} of its channels`) +
        ": multiply element by element, add everything up, add the bias." +
        (ex.outside.flat().some((v) => v) ? " Grey cells are zero padding." : "") }),
      blocks,
      shown < depth ? el("p", { class: "note", text: `(the first ${shown} of ${depth} channels are listed; the sum has them all)` }) : null,
      sums([[`sum of the ${depth * fh * fw} products = `, number("unit-sum", ex.sum)],
            ["+ bias ", number("unit-bias", ex.bias), " = ", number("unit-value", ex.value, true)],
            [holds(answer), number("unit-activation", answer.activation)]]),
    ];
  }

  function explainMax(ex, answer, inputName) {
    const [r, c] = ex.winner;
    return [
      el("p", { text: `The ${ex.window.length} x ${ex.window[0].length} window at rows ` +
        `${span(...ex.rows)}, columns ${span(...ex.cols)} of ${inputName} channel ${ex.channel}: ` +
        "the largest number wins (the first one, reading row by row, if several tie)." }),
      el("div", { class: "explained" }, cells(ex.window, null, ex.winner)),
      sums([["max = ", number("unit-value", ex.value, true),
             `, at row ${r}, column ${c} of the window (${inputName} row ${ex.rows[0] + r}, ` +
             `column ${ex.cols[0] + c})`],
            [holds(answer), number("unit-activation", answer.activation)]]),
    ];
  }

  function explainMean(ex, answer, inputName) {
    return [
      el("p", { text: `The ${ex.window.length} x ${ex.window[0].length} window at rows ` +
        `${span(...ex.rows)}, columns ${span(...ex.cols)} of ${inputName} channel ${ex.channel}: ` +
        "its mean." }),
      el("div", { class: "explained" }, cells(ex.window)),
      sums([[`sum of the ${ex.count} numbers = `, number("unit-sum", ex.sum)],
            [`/ ${ex.count} = `, number("unit-value", ex.value, true)],
            [holds(answer), number("unit-activation", answer.activation)]]),
    ];
  }

  function explainFC(ex, answer, inputName) {
    const where = ex.shape.length === 3 ? "(row, column, channel)" : "index";
    const table = el("table", { class: "cells" },
      el("tr", {}, ...[`${inputName} ${where}`, "x", "w", "x \u00d7 w"].map((t) => el("th", { text: t }))),
      ...ex.top.map((term) => el("tr", {}, el("td", { text: `(${term.at.join(", ")})` }),
        el("td", { text: fmt(term.x, CELL_DIGITS) }), el("td", { text: fmt(term.w, CELL_DIGITS) }),
        el("td", { text: fmt(term.product, CELL_DIGITS) }))));
    return [
      el("p", { text: `Unit ${ex.channel}: all ${ex.inputs} numbers of ${inputName} ` +
        `(${ex.shape.join(" x ")}, read in (H, W, D) order) times column ${ex.channel} of W, ` +
        `added up, plus the bias. The ${ex.top.length} largest products:` }),
      el("div", { class: "explained" }, table),
      sums([[`the other ${ex.inputs - ex.top.length} products add up to `, number("unit-rest", ex.rest)],
            [`sum of all ${ex.inputs} products = `, number("unit-sum", ex.sum)],
            ["+ bias ", number("unit-bias", ex.bias), " = ", number("unit-value", ex.value, true)],
            [holds(answer), number("unit-activation", answer.activation)]]),
    ];
  }

  /* Where the worked number sits in the layer's output: a map, a vector, or the class scores. */
  function holds(answer) {
    const layer = model.layers.find((other) => other.name === answer.layer);
    if (layer && layer.spatial) return "the map holds ";
    return layer === scores ? `the score of class ${model.classes[answer.channel]} is `
      : "the layer's output holds ";
  }

  function explainSum(ex, answer, inputName) {
    const terms = ex.parts.map((part, k) => [k ? "+ " : "", `branch ${part.branch} (`,
      el("code", { text: part.text }), ") ", number(`unit-part-${part.branch}`, part.value)]);
    return [
      el("p", { text: `Every branch starts from ${inputName}; ADD adds their numbers at this ` +
        `place: channel ${ex.channel} of each branch, one number each.` }),
      sums([...terms, ["= ", number("unit-value", ex.value, true)],
            ["the map holds ", number("unit-activation", answer.activation)]]),
    ];
  }

  function explainConcat(ex, answer, inputName) {
    const ranges = ex.depths.map((d, k) => {
      const first = ex.depths.slice(0, k).reduce((a, b) => a + b, 0);
      return `branch ${k + 1}: channels ${first}..${first + d - 1}`;
    }).join("; ");
    return [
      el("p", { text: `CONCAT stacks its branches along the depth (${ranges}). Channel ` +
        `${ex.channel} is channel ${ex.channel_in_branch} of branch ${ex.branch}:` }),
      el("p", {}, el("code", { text: ex.text })),
      sums([[`branch ${ex.branch}, channel ${ex.channel_in_branch} = `,
             number("unit-value", ex.value, true)],
            ["the map holds ", number("unit-activation", answer.activation)]]),
    ];
  }

  const EXPLAIN = { dot: explainDot, max: explainMax, mean: explainMean, fc: explainFC,
                    sum: explainSum, concat: explainConcat };

  function showUnit(layer, answer) {
    const body = $("unit-body");
    const before = model.layers.find((other) => other.index === answer.index - 1);
    const inputName = before ? before.name : "input";
    const [r0, r1] = answer.field.rows;
    const [c0, c1] = answer.field.cols;
    const past = r0 < 0 || c0 < 0 || r1 > H || c1 > W;
    placeField($("field"), answer.field);

    const mini = el("canvas", { width: W, height: H });
    if (inputPixels) paintPixels(mini, inputPixels);
    const box = el("div", { class: "field" });
    placeField(box, answer.field);
    const where = layer.spatial
      ? `channel ${answer.channel} at row ${answer.row}, column ${answer.col}`
      : layer === scores ? `the score of class ${model.classes[answer.channel]} (unit ` +
        `${answer.channel})` : `unit ${answer.channel}`;
    const explanation = answer.explanation;
    const parts = explanation && EXPLAIN[explanation.form]
      ? EXPLAIN[explanation.form](explanation, answer, inputName)
      : [sums([[holds(answer), number("unit-activation", answer.activation, true)]]),
         el("p", { class: "note", text: `${layer.text} works on each number by itself, or ` +
           "has no arithmetic of its own to show: click a CONV, POOL or FC unit for that." })];
    body.replaceChildren(
      el("div", { class: "unit-top" }, el("div", { class: "seen" }, mini, box),
        el("div", {},
          el("p", {}, el("b", { text: answer.layer }), " ", el("code", { text: answer.text }),
             `: ${where}`),
          el("p", { class: "note", id: "unit-field", text: `Its receptive field on the input: ` +
            `rows ${span(r0, r1)}, columns ${span(c0, c1)} ` +
            `(${r1 - r0} x ${c1 - c0} pixels${past ? ", partly beyond the edge, in the padding" : ""}).` }))),
      ...parts.filter((part) => part !== null));
    Object.assign(body.dataset, { layer: answer.layer, row: answer.row, col: answer.col,
                                  channel: answer.channel });
  }

  // ---- top patches ----

  const patchesForm = $("patches-form");

  function channelLimit() {
    const layer = model.layers.find((other) => other.name === patchesForm.layer.value);
    if (layer) patchesForm.channel.max = layer.output_shape[2] - 1;
  }

  async function loadPatches() {
    const status = $("patches-status");
    const query = new URLSearchParams(new FormData(patchesForm));
    status.classList.remove("error");
    status.textContent = "finding the strongest patches in the test images " +
      "(the first time for a layer takes a moment) ...";
    $("patches-grid").replaceChildren();
    try {
      const answer = await call(`/api/patches?${query}`);
      status.textContent = `${answer.layer} channel ${answer.channel}: the ` +
        `${answer.patches.length} test images of ${answer.data} that excite it most, each ` +
        `cropped to the ${answer.field.join(" x ")} receptive field of its strongest unit`;
      $("patches-grid").replaceChildren(...answer.patches.map((patch, rank) =>
        el("div", { class: "patch", "data-rank": rank },
          el("img", { src: patch.uri, alt: `test image ${patch.image}` }),
          el("div", { class: "mono value", text: fmt(patch.value, 3) }),
          el("div", { text: `image ${patch.image}: ${patch.label}` }),
          el("div", { class: "note", text: `unit (${patch.row}, ${patch.col})` }))));
    } catch (err) {
      status.classList.add("error");
      status.textContent = err.message;
    }
  }

  patchesForm.addEventListener("submit", (event) => {
    event.preventDefault();
    loadPatches();
  });
  patchesForm.layer.addEventListener("change", channelLimit);

  buildLayers();
  channelLimit();
})();
