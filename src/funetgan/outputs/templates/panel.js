// report.html's operating-point panel: histograms of the test scores, an image-threshold
// slider with live counts, a pixel-threshold slider that redraws the examples' masks, and the
// command that makes the chosen thresholds the run's own. Its data (outputs/operating_point.py)
// is made so that every figure here equals Python's exactly; window.operatingPoint holds them
// as numbers (for the browser test) and .ready turns true once the masks are drawn.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("panel-data").textContent);
  const byId = (id) => document.getElementById(id);
  const state = { ready: false, image: null, pixel: null };
  window.operatingPoint = state;

  // ---- image threshold -------------------------------------------------------------------
  const scores = data.scores, total = scores.length;
  // Normals and anomalies at or above scores[i] (scores ascending): suffix sums.
  const normalsFrom = new Int32Array(total + 1), anomaliesFrom = new Int32Array(total + 1);
  for (let i = total - 1; i >= 0; i--) {
    const anomalous = data.labels.charCodeAt(i) === 49; // "1"
    normalsFrom[i] = normalsFrom[i + 1] + (anomalous ? 0 : 1);
    anomaliesFrom[i] = anomaliesFrom[i + 1] + (anomalous ? 1 : 0);
  }
  // Slider positions: every distinct test score, and this test's and the calibrated threshold.
  const imagePositions = Array.from(new Set([...scores, data.threshold, data.calibrated.threshold]))
    .sort((a, b) => a - b);

  // The first index of ascending `values` whose value is >= t (strict: > t).
  function firstFrom(values, t, strict) {
    let low = 0, high = values.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (strict ? values[mid] > t : values[mid] >= t) high = mid; else low = mid + 1;
    }
    return low;
  }

  const ratio = (a, b) => (b > 0 ? a / b : null);

  function imageFigures(t) {
    const from = firstFrom(scores, t, false);
    const fp = normalsFrom[from], tp = anomaliesFrom[from];
    const normals = normalsFrom[0], anomalies = anomaliesFrom[0];
    const tn = normals - fp, fn = anomalies - tp;
    // The share of new normals at or above t: (1 + calibration normals above t) / (count + 1)
    // (thresholds.expected_rate); none for runs calibrated before their scores were kept.
    const calibration = data.normals;
    const expected = calibration
      ? (1 + calibration.length - firstFrom(calibration, t, true)) / (calibration.length + 1) : null;
    return {
      threshold: t, unit: toUnit(t, data.unit), tp, fp, tn, fn, normals, anomalies,
      precision: ratio(tp, tp + fp), recall: ratio(tp, anomalies), f1: ratio(2 * tp, 2 * tp + fp + fn),
      specificity: ratio(tn, normals), expected,
    };
  }

  function toUnit(value, unit) { // unit_scale.to_unit
    if (!unit) return null;
    const excess = Math.max(value - unit.median, 0);
    return excess / (excess + unit.spread);
  }

  const percent = (value) => (value === null ? "–" : (100 * value).toFixed(1) + " %");
  const number = (value) => (value === null ? "–" : value.toFixed(4));
  const short = (value) => Number(value.toPrecision(4)).toString();

  function showImage() {
    const f = imageFigures(imagePositions[Number(byId("op-image").value)]);
    state.image = f;
    byId("op-image-value").textContent = `${short(f.threshold)}` + (f.unit === null ? "" : ` (${f.unit.toFixed(3)} on [0, 1])`);
    byId("op-fp").textContent = `${f.fp} of ${f.normals}`;
    byId("op-fp-share").textContent = percent(ratio(f.fp, f.normals));
    byId("op-tp").textContent = `${f.tp} of ${f.anomalies}`;
    byId("op-recall").textContent = percent(f.recall);
    byId("op-precision").textContent = number(f.precision);
    byId("op-recall-again").textContent = number(f.recall);
    byId("op-f1").textContent = number(f.f1);
    byId("op-specificity").textContent = number(f.specificity);
    byId("op-expected").textContent = f.expected === null
      ? "– (this run was calibrated before funetgan kept its normals' scores: calibrate it again to see it)"
      : percent(f.expected);
    drawHistogram(f.unit);
    showCommand();
  }

  // ---- histograms ----------------------------------------------------------------------------
  const BINS = 50;
  const binned = [new Array(BINS).fill(0), new Array(BINS).fill(0)]; // normals, anomalies
  if (data.unit) {
    for (let i = 0; i < total; i++) {
      const bin = Math.min(Math.floor(toUnit(scores[i], data.unit) * BINS), BINS - 1);
      binned[data.labels.charCodeAt(i) === 49 ? 1 : 0][bin] += 1;
    }
  }

  function drawHistogram(chosen) {
    const canvas = byId("op-histogram"), ctx = canvas.getContext("2d");
    const width = canvas.width, height = canvas.height, left = 40, right = 20, top = 28, bottom = 36;
    const plotWidth = width - left - right, plotHeight = height - top - bottom;
    const x = (u) => left + u * plotWidth;
    ctx.clearRect(0, 0, width, height);
    ctx.font = "12px system-ui, sans-serif";
    [["rgba(31,119,180,0.55)", binned[0]], ["rgba(214,39,40,0.55)", binned[1]]].forEach(([color, counts]) => {
      const tallest = Math.max(1, ...counts);
      ctx.fillStyle = color;
      counts.forEach((count, bin) => {
        const barHeight = (count / tallest) * plotHeight;
        ctx.fillRect(x(bin / BINS) + 0.5, top + plotHeight - barHeight, plotWidth / BINS - 1, barHeight);
      });
    });
    ctx.strokeStyle = "#888";
    ctx.fillStyle = "#222";
    ctx.beginPath();
    ctx.moveTo(left, top + plotHeight + 0.5);
    ctx.lineTo(left + plotWidth, top + plotHeight + 0.5);
    ctx.stroke();
    ctx.textAlign = "center";
    [0, 0.25, 0.5, 0.75, 1].forEach((u) => ctx.fillText(String(u), x(u), top + plotHeight + 15));
    ctx.fillText("image score on the calibration's [0, 1] scale (0: the calibration normals' median, 0.5: their "
      + "normal quantile)", left + plotWidth / 2, height - 4);
    const marks = [[toUnit(data.calibrated.threshold, data.unit), "#222", [5, 4], "calibrated"],
      [chosen, "#ff8c00", [], "chosen"]];
    marks.forEach(([u, color, dash, label], k) => {
      if (u === null) return;
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 2;
      ctx.setLineDash(dash);
      ctx.beginPath();
      ctx.moveTo(x(u), top - 4);
      ctx.lineTo(x(u), top + plotHeight);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.lineWidth = 1;
      ctx.textAlign = u > 0.8 ? "right" : "left";
      ctx.fillText(label, x(u) + (u > 0.8 ? -4 : 4), top + 8 + 13 * k);
    });
  }

  // ---- pixel threshold -----------------------------------------------------------------------
  const pixel = data.pixel, examples = [];

  function showPixel() {
    const index = Number(byId("op-pixel").value), t = pixel.thresholds[index], counts = pixel.counts;
    const f = { index, threshold: t, unit: toUnit(t, pixel.unit), dice: null, normalShare: null, tp: null, fp: null };
    if (counts) {
      f.tp = counts.tp[index];
      f.fp = counts.fp[index];
      f.dice = ratio(2 * f.tp, f.tp + f.fp + counts.positives);
      f.normalShare = ratio(f.fp, counts.negatives);
    }
    state.pixel = f;
    byId("op-pixel-value").textContent = `${short(t)}` + (f.unit === null ? "" : ` (${f.unit.toFixed(3)} on [0, 1])`);
    byId("op-dice").textContent = number(f.dice);
    byId("op-normal-pixels").textContent = counts ? percent(f.normalShare) : "– (no pixel truth in this test set)";
    examples.forEach((example) => drawMask(example, index));
    showCommand();
  }

  // Pixel i of an example is in the mask at position `index` when its code reaches index + 1.
  function drawMask(example, index) {
    const image = example.maskContext.createImageData(example.width, example.height), rgba = image.data;
    for (let i = 0; i < example.codes.length; i++) {
      if (example.codes[i] > index) {
        rgba[4 * i] = 255; rgba[4 * i + 1] = 40; rgba[4 * i + 2] = 40; rgba[4 * i + 3] = 150;
      }
    }
    example.maskContext.putImageData(image, 0, 0);
  }

  // The outline of the truth mask: its pixels with a 4-neighbour outside it.
  function drawTruth(example, truth) {
    const { width, height } = example, context = example.truthCanvas.getContext("2d");
    const image = context.createImageData(width, height), rgba = image.data;
    const inside = (x, y) => x >= 0 && y >= 0 && x < width && y < height && truth[y * width + x];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (inside(x, y) && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1))) {
          const i = 4 * (y * width + x);
          rgba[i] = 40; rgba[i + 1] = 220; rgba[i + 2] = 40; rgba[i + 3] = 255;
        }
      }
    }
    context.putImageData(image, 0, 0);
  }

  function addExample(entry) {
    return new Promise((resolve, reject) => {
      const png = new Image();
      png.onerror = () => reject(new Error(`example ${entry.name}: its map did not decode`));
      png.onload = () => {
        const width = png.naturalWidth, height = png.naturalHeight;
        const scratch = document.createElement("canvas");
        scratch.width = width;
        scratch.height = height;
        const context = scratch.getContext("2d", { willReadFrequently: true });
        context.drawImage(png, 0, 0);
        const rgba = context.getImageData(0, 0, width, height).data;
        const codes = new Uint8Array(width * height), truth = new Uint8Array(width * height);
        for (let i = 0; i < codes.length; i++) {
          codes[i] = rgba[4 * i];
          truth[i] = rgba[4 * i + 1] > 127 ? 1 : 0;
        }
        const figure = document.createElement("figure"), tile = document.createElement("div");
        tile.className = "op-tile";
        tile.style.backgroundImage = `url("overlays/${encodeURIComponent(entry.name)}.png")`;
        const [maskCanvas, truthCanvas] = [0, 1].map(() => {
          const canvas = document.createElement("canvas");
          canvas.width = width;
          canvas.height = height;
          tile.appendChild(canvas);
          return canvas;
        });
        maskCanvas.className = "op-mask";
        maskCanvas.dataset.name = entry.name;
        const caption = document.createElement("figcaption");
        caption.textContent = `${entry.name}: ${entry.title}`;
        figure.append(tile, caption);
        const example = { name: entry.name, width, height, codes, maskCanvas, truthCanvas,
          maskContext: maskCanvas.getContext("2d", { willReadFrequently: true }) };
        if (entry.truth) drawTruth(example, truth);
        resolve({ example, figure });
      };
      png.src = entry.codes;
    });
  }

  // ---- the command ---------------------------------------------------------------------------
  function showCommand() {
    if (!state.image || !state.pixel) return;
    const run = data.run === null ? "RUN" : data.run;
    byId("op-command").textContent = `funetgan calibrate --run ${run} --threshold ${String(state.image.threshold)} `
      + `--pixel-threshold ${String(state.pixel.threshold)}`;
  }

  // ---- start ---------------------------------------------------------------------------------
  const calibrated = data.calibrated;
  byId("op-calibrated").textContent = `Calibrated image threshold ${short(calibrated.threshold)} `
    + `(${calibrated.rule})` + (calibrated.promise ? `: ${calibrated.promise}.` : ".");
  const imageSlider = byId("op-image"), pixelSlider = byId("op-pixel");
  imageSlider.max = imagePositions.length - 1;
  imageSlider.value = imagePositions.indexOf(data.threshold);
  pixelSlider.max = pixel.thresholds.length - 1;
  pixelSlider.value = pixel.start;
  if (!pixel.plain) {
    byId("op-pixel-note").textContent = "This run's mask rule also drops regions (a region threshold or a "
      + "smallest area, or masks in flagged images only); the masks here are the plain threshold's.";
  }
  imageSlider.addEventListener("input", showImage);
  pixelSlider.addEventListener("input", showPixel);
  showImage();
  Promise.all(data.examples.map(addExample)).then((added) => {
    added.forEach(({ example, figure }) => {
      examples.push(example);
      byId("op-examples").appendChild(figure);
    });
    showPixel();
    state.ready = true;
    document.getElementById("operating-point").dataset.ready = "true";
  }, (error) => {
    byId("op-pixel-note").textContent = String(error);
    showPixel();
  });
})();
