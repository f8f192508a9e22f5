// spatial-attn heatmap panels, run by gr.HTML's js_on_load (`element` and `watch` are given).
//
// The server sends, in the panels' HTML, every layer's pinned vector (the clicked pixel's row or
// column for every head) and, once per model run, its queries and keys. This script draws the
// panels from that data and, while the mouse is over the input image, recomputes each layer's row
// for the pixel under it: softmax(q_i . k^T), as QKScores.row does on the server, so hover costs no
// round trip. Colour scales follow spatial_attn/render.py (ColourScale).
(() => {
  const SPAN = 4; // render.SPAN: the "× uniform" axis spans 2^-SPAN .. 2^SPAN
  const root = () => element.querySelector(".sa-panels");
  let data = null; // the parsed payload of the panels on screen
  let hover = { id: null, layers: [] }; // decoded q, k, lse per layer, kept across re-renders
  let hovering = null; // the model-input pixel [y, x] under the mouse, or null
  let keyed = null; // a pixel pinned with the arrow keys whose panels the server has not sent yet
  const images = new Map(); // data URI -> loaded <img>

  // -- decoding ---------------------------------------------------------------------------------
  const bytes = (b64) => {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  };
  const HALF = (() => {
    // every float16 bit pattern as a float32, so decoding is one table lookup per number
    const table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exp = (h >> 10) & 0x1f;
      const frac = h & 0x3ff;
      table[h] =
        exp === 0 ? sign * frac * 2 ** -24
        : exp === 31 ? (frac ? NaN : sign * Infinity)
        : sign * (1 + frac / 1024) * 2 ** (exp - 15);
    }
    return table;
  })();
  const halves = (b64) => {
    const raw = new Uint16Array(bytes(b64));
    const out = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = HALF[raw[i]];
    return out;
  };
  const floats = (b64) => new Float32Array(bytes(b64));

  let asked = null; // the run whose queries and keys were last asked for
  function load() {
    const el = root();
    data = el ? JSON.parse(el.dataset.payload) : null;
    if (!data) return;
    for (const layer of data.layers) layer.pinnedValues = floats(layer.pinned.values);
    if (data.id !== hover.id && data.id !== asked) fetchHover((asked = data.id));
  }
  function fetchHover(id) {
    // once per run, not with every click (views/panels.py: hover_data)
    server.hover_data(id).then((text) => {
      if (!text || asked !== id) return;
      const raw = JSON.parse(text);
      hover = { id, layers: raw.map((h) => h && { d: h.d, q: halves(h.q), k: halves(h.k), lse: floats(h.lse) }) };
      if (hovering || keyed) draw(hovering || keyed);
    });
  }
  // a layer's decoded queries and keys, if they are the run's on screen
  const live = (index) => (data && hover.id === data.id ? hover.layers[index] : null);

  // -- the attention math the hover needs (the definition: QKScores.row / column) -----------------
  function rowFromQK(layer, qk, token) {
    // every head's probabilities over the N' keys for query `token`: (h * N')
    const { heads } = layer, n = layer.queries.count, m = layer.keys.count, d = qk.d;
    const out = new Float32Array(heads * m);
    for (let h = 0; h < heads; h++) {
      const qo = (h * n + token) * d;
      let top = -Infinity;
      for (let j = 0; j < m; j++) {
        const ko = (h * m + j) * d;
        let s = 0;
        for (let c = 0; c < d; c++) s += qk.q[qo + c] * qk.k[ko + c];
        out[h * m + j] = s;
        if (s > top) top = s;
      }
      let sum = 0;
      for (let j = 0; j < m; j++) sum += (out[h * m + j] = Math.exp(out[h * m + j] - top));
      for (let j = 0; j < m; j++) out[h * m + j] /= sum;
    }
    return out;
  }
  function columnFromQK(layer, qk, key) {
    // what every query gives key `key`, every head: exp(q_i . k_j - lse_i), (h * N)
    const { heads } = layer, n = layer.queries.count, m = layer.keys.count, d = qk.d;
    const out = new Float32Array(heads * n);
    for (let h = 0; h < heads; h++) {
      const ko = (h * m + key) * d;
      for (let i = 0; i < n; i++) {
        const qo = (h * n + i) * d;
        let s = 0;
        for (let c = 0; c < d; c++) s += qk.q[qo + c] * qk.k[ko + c];
        out[h * n + i] = Math.exp(s - qk.lse[h * n + i]);
      }
    }
    return out;
  }
  const cellAt = (py, px, hw, grid) => [
    Math.min(Math.floor(((py + 0.5) * grid[0]) / hw[0]), grid[0] - 1),
    Math.min(Math.floor(((px + 0.5) * grid[1]) / hw[1]), grid[1] - 1),
  ];
  const tokenOf = (layout, cell) => layout.start + cell[0] * layout.grid[1] + cell[1];

  // what one layer shows for the pixel under the mouse: {mode, cell, token, vector}, or null
  function hovered(index, pixel) {
    const layer = data.layers[index];
    const qk = live(index);
    if (!qk) return null;
    const mode = layer.pinned.mode;
    const layout = mode === "row" ? layer.queries : layer.keys;
    const cell = cellAt(pixel[0], pixel[1], data.image_hw, layout.grid);
    const token = tokenOf(layout, cell);
    const vector = mode === "row" ? rowFromQK(layer, qk, token) : columnFromQK(layer, qk, token);
    return { mode, cell, token, vector, preview: true };
  }

  // -- heads, maps and scales ---------------------------------------------------------------------
  function reduce(vector, heads, choice) {
    const m = vector.length / heads;
    const out = new Float32Array(m);
    const k = choice.startsWith("head ") ? Number(choice.slice(5)) : null;
    for (let j = 0; j < m; j++) {
      if (k !== null && k < heads) out[j] = vector[k * m + j];
      else if (choice === "max") {
        let best = -Infinity;
        for (let h = 0; h < heads; h++) best = Math.max(best, vector[h * m + j]);
        out[j] = best;
      } else {
        let s = 0;
        for (let h = 0; h < heads; h++) s += vector[h * m + j];
        out[j] = s / heads;
      }
    }
    return out;
  }
  function maps(layer, shown) {
    // [{title, tokens (whole vector), values (grid part)}] for one figure
    const layout = shown.mode === "row" ? layer.keys : layer.queries;
    const grid = (v) => (layout.grid ? v.subarray(layout.start, layout.start + layout.grid[0] * layout.grid[1]) : v);
    const view = data.view, heads = layer.heads;
    if (view.heads_grid && shown.mode === "row" && heads > 1) {
      const out = [];
      for (let h = 0; h < heads; h++) {
        const v = reduce(shown.vector, heads, `head ${h}`);
        out.push({ title: `head ${h}`, tokens: v, values: grid(v) });
      }
      const mean = reduce(shown.vector, heads, "mean");
      out.push({ title: `mean of ${heads} heads`, tokens: mean, values: grid(mean) });
      return out;
    }
    const v = reduce(shown.vector, heads, view.head);
    return [{ title: "", tokens: v, values: grid(v) }];
  }
  const maxOf = (v) => v.reduce((a, b) => Math.max(a, b), 0);
  function percentile99(v) {
    const s = Float64Array.from(v).sort();
    const at = 0.99 * (s.length - 1), lo = Math.floor(at);
    return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (at - lo);
  }
  function scaleFor(all, layer, shared) {
    // render.colour_scale: {uniform, top, tokens}
    const kind = data.view.scale;
    if (kind === "× uniform") return { uniform: true, top: 1, tokens: layer.keys.count };
    let top = kind === "shared" ? shared : 0;
    if (kind !== "shared") for (const m of all) top = Math.max(top, kind === "percentile" ? percentile99(m.values) : maxOf(m.values));
    return { uniform: false, top: top > 0 ? top : 1, tokens: layer.keys.count };
  }
  const unit = (scale, v) =>
    scale.uniform
      ? Math.min(1, Math.max(0, (Math.log2(Math.max(v * scale.tokens, 2 ** -60)) + SPAN) / (2 * SPAN)))
      : Math.min(1, Math.max(0, v / scale.top));
  const ratioText = (r) => (r >= 1 ? `${r}×` : `1/${1 / r}×`);
  function ticks(scale) {
    if (scale.uniform) {
      const out = [];
      for (let e = -SPAN; e <= SPAN; e += 2) out.push([(e + SPAN) / (2 * SPAN), ratioText(2 ** e)]);
      return out;
    }
    return [0, 0.5, 1].map((f) => [f, Number((scale.top * f).toPrecision(3)).toString()]);
  }
  function entropyBits(p) {
    let s = 0;
    for (const x of p) if (x > 0) s -= x * Math.log2(x);
    return s;
  }

  // -- drawing ------------------------------------------------------------------------------------
  function picture(uri, then) {
    let img = images.get(uri);
    if (!img) {
      img = new Image();
      img.onload = then;
      img.src = uri;
      images.set(uri, img);
    }
    return img.complete && img.naturalWidth ? img : null;
  }
  function paint(canvas, map, layer, shown, scale, base) {
    const ctx = canvas.getContext("2d");
    const size = canvas.width, lut = data.lut, view = data.view;
    const layout = shown.mode === "row" ? layer.keys : layer.queries;
    const [gh, gw] = layout.grid || [1, map.values.length];
    const heat = new ImageData(gw, gh);
    for (let i = 0; i < gh * gw; i++) {
      const c = Math.floor(unit(scale, map.values[i]) * 255) * 3;
      heat.data.set([lut[c], lut[c + 1], lut[c + 2], 255], 4 * i);
    }
    const small = new OffscreenCanvas(gw, gh);
    small.getContext("2d").putImageData(heat, 0, 0);
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, size, canvas.height);
    if (base && layout.grid) ctx.drawImage(base, 0, 0, size, size);
    ctx.globalAlpha = layout.grid ? view.opacity : 1;
    ctx.imageSmoothingEnabled = view.smooth;
    ctx.drawImage(small, 0, 0, size, canvas.height);
    ctx.globalAlpha = 1;
    const outlineGrid = (shown.mode === "row" ? layer.queries : layer.keys).grid;
    if (outlineGrid && layout.grid) {
      const [y, x] = shown.cell, ch = size / outlineGrid[0], cw = size / outlineGrid[1];
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(Math.round(x * cw) + 1.5, Math.round(y * ch) + 1.5, Math.round(cw) - 3, Math.round(ch) - 3);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(Math.round(x * cw) + 1.5, Math.round(y * ch) + 1.5, Math.round(cw) - 3, Math.round(ch) - 3);
    }
    canvas.saMap = { values: map.values, grid: [gh, gw], scale, spatial: Boolean(layout.grid), preview: Boolean(shown.preview) };
  }
  function colorbar(figure, scale) {
    const bar = figure.querySelector(".sa-bar");
    const ctx = bar.getContext("2d");
    const img = new ImageData(256, 1);
    for (let i = 0; i < 256; i++) img.data.set([data.lut[3 * i], data.lut[3 * i + 1], data.lut[3 * i + 2], 255], 4 * i);
    const strip = new OffscreenCanvas(256, 1);
    strip.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(strip, 0, 0, bar.width, bar.height);
    const labels = figure.querySelector(".sa-ticks");
    const key = JSON.stringify([scale.uniform, scale.top, scale.tokens]);
    if (labels.dataset.key !== key) {
      labels.dataset.key = key;
      labels.replaceChildren(
        ...ticks(scale).map(([pos, text]) => {
          const span = document.createElement("span");
          span.textContent = text;
          span.style.left = `${pos * 100}%`;
          return span;
        }),
      );
      // the colour axis's unit, on the line that reads a value under the mouse (readout)
      const label = figure.querySelector(".sa-value");
      label.dataset.unit = scale.uniform ? `× uniform (1× = 1/${scale.tokens})` : "probability";
      label.textContent = label.dataset.unit;
      label.title = scale.uniform ? `1× = 1/${scale.tokens}: what every key gets when attention is even` : "";
    }
    spaced(labels);
  }
  function spaced(labels) {
    // hide a tick label that would touch the one kept before it (narrow panels); the last one is kept
    const spans = [...labels.children];
    spans.forEach((s) => s.classList.remove("sa-hidden"));
    let right = -Infinity;
    const boxes = spans.map((s) => s.getBoundingClientRect());
    if (!boxes.length || !boxes[0].width) return; // not laid out (a hidden tab)
    const last = boxes[boxes.length - 1];
    spans.forEach((s, i) => {
      const b = boxes[i];
      const clash = b.left < right + 4 || (i < spans.length - 1 && b.right > last.left - 4);
      if (clash) s.classList.add("sa-hidden");
      else right = b.right;
    });
  }
  function stats(layer, shown, map) {
    if (shown.mode !== "row") return `key cell (${shown.cell.join(", ")})`;
    const dist = data.view.head === "max" ? reduce(shown.vector, layer.heads, "mean") : map.tokens;
    const parts = [
      `cell (${shown.cell.join(", ")}) · token ${shown.token}`,
      `entropy ${entropyBits(dist).toFixed(2)}/${Math.log2(layer.keys.count).toFixed(2)} bits` +
        (data.view.head === "max" && layer.heads > 1 ? " (head mean)" : ""),
    ];
    layer.keys.special.forEach((j, s) => parts.push(`${layer.keys.labels[s]} ${(map.tokens[j] * 100).toFixed(1)}%`));
    return parts.join(" · ");
  }

  function draw(pixel) {
    // every panel, for `pixel` (hover) or the pinned click (null)
    if (!data) return;
    const base = picture(data.base, () => draw(hovering || keyed));
    const figures = root().querySelectorAll("figure.sa-panel");
    const shown = data.layers.map((layer, i) => (pixel && hovered(i, pixel)) || { ...layer.pinned, vector: layer.pinnedValues });
    const all = data.layers.map((layer, i) => maps(layer, shown[i]));
    const shared = Math.max(...all.flat().map((m) => maxOf(m.values)));
    data.layers.forEach((layer, i) => {
      const figure = figures[i];
      const scale = scaleFor(all[i], layer, shared);
      const canvases = figure.querySelectorAll("canvas.sa-map");
      all[i].forEach((map, k) => canvases[k] && paint(canvases[k], map, layer, shown[i], scale, base));
      colorbar(figure, scale);
      const preview = shown[i].preview ? " · float16 preview" : ""; // see readout
      figure.querySelector(".sa-stats").textContent = stats(layer, shown[i], all[i][all[i].length - 1]) + preview;
      const followed = pixel && live(i);
      figure.dataset.pixel = (followed ? pixel : data.pixel).join(",");
      figure.classList.toggle("sa-stale", Boolean(pixel) && !followed);
    });
    root().dataset.pixel = (pixel || data.pixel).join(",");
  }

  // -- the pinned pixel, outlined on the clickable image ------------------------------------------
  // Drawn here rather than into the picture on the server, so that a click's answer carries no image
  // (encoding and storing one was most of a click's server time). Black outside, white inside, as
  // render.draw_cell draws it in exports: visible on any colour.
  let watched = null; // the image's block, watched so that a picture Gradio re-creates is marked again
  function mark() {
    const frame = document.querySelector("#input-image");
    if (frame && frame !== watched) {
      watched = frame;
      new MutationObserver(() => frame.querySelector(".sa-marker") || mark()).observe(frame, {
        childList: true,
        subtree: true,
      });
    }
    const img = frame && frame.querySelector("img");
    if (!img || !data) return;
    if (!img.complete || !img.naturalWidth) {
      img.addEventListener("load", mark, { once: true }); // a new run's picture, still loading
      return;
    }
    const host = img.parentElement;
    let box = host.querySelector(":scope > .sa-marker");
    if (!box) {
      box = document.createElement("div");
      box.className = "sa-marker";
      if (getComputedStyle(host).position === "static") host.style.position = "relative";
      host.appendChild(box);
    }
    const p = placed(img), h = host.getBoundingClientRect();
    const left = p.left - h.left, top = p.top - h.top;
    const [H, W] = data.image_hw, [y, x] = keyed || data.pixel;
    const cw = (p.nw * p.s) / W, ch = (p.nh * p.s) / H;
    box.style.cssText =
      `position:absolute;pointer-events:none;box-sizing:border-box;left:${left + x * cw}px;` +
      `top:${top + y * ch}px;width:${Math.max(cw, 2)}px;height:${Math.max(ch, 2)}px;` +
      "border:1px solid #fff;outline:2px solid #000;";
    box.dataset.pixel = (keyed || data.pixel).join(",");
  }
  window.addEventListener("resize", () => mark());

  // -- events -------------------------------------------------------------------------------------
  function placed(img) {
    // where an <img>'s picture lies on the page, as Gradio's select event maps a click onto it
    // (ImagePreview: scale capped at 1, centred): its top-left corner, scale and natural size
    const r = img.getBoundingClientRect(), nw = img.naturalWidth, nh = img.naturalHeight;
    const s = Math.min(r.width / nw, r.height / nh, 1);
    return { left: r.left + (r.width - nw * s) / 2, top: r.top + (r.height - nh * s) / 2, s, nw, nh };
  }
  function pixelUnder(event, img) {
    // the model-input pixel under the mouse: the image pixel exactly as Gradio's select event
    // computes it for a click (rounded), then grid.cell_at
    if (!img.naturalWidth || !img.naturalHeight) return null;
    const p = placed(img);
    const x = Math.round((event.clientX - p.left) / p.s), y = Math.round((event.clientY - p.top) / p.s);
    if (y < 0 || x < 0 || y >= p.nh || x >= p.nw) return null;
    return cellAt(y, x, [p.nh, p.nw], data.image_hw);
  }
  document.addEventListener("pointerdown", (event) => {
    // a click (or tap) on the image pins its pixel: a pending arrow-key pixel gives way to it
    if (event.target.closest && event.target.closest("#input-image img")) keyed = null;
  });
  document.addEventListener("mousemove", (event) => {
    if (!data || !root()) return;
    const img = event.target.closest ? event.target.closest("#input-image img") : null;
    const pixel = img && pixelUnder(event, img);
    if (pixel) {
      if (!hovering || pixel[0] !== hovering[0] || pixel[1] !== hovering[1]) draw((hovering = pixel));
    } else if (hovering) {
      hovering = null;
      draw(keyed);
    }
    const canvas = event.target.closest ? event.target.closest("canvas.sa-map") : null;
    if (canvas && canvas.saMap && element.contains(canvas)) readout(event, canvas);
    else if (reading) unread();
  });
  let reading = null; // the value line showing a readout, put back to its unit when the mouse leaves
  function unread() {
    reading.textContent = reading.dataset.unit || "";
    reading.title = "";
    reading = null;
  }
  function readout(event, canvas) {
    const { values, grid, scale, spatial, preview } = canvas.saMap;
    const r = canvas.getBoundingClientRect();
    const y = Math.min(grid[0] - 1, Math.floor(((event.clientY - r.top) * grid[0]) / r.height));
    const x = Math.min(grid[1] - 1, Math.floor(((event.clientX - r.left) * grid[1]) / r.width));
    const v = values[y * grid[1] + x];
    const where = spatial ? `cell (${y}, ${x})` : `token ${x}`;
    // a hovered (or arrow-key) pixel's row is computed here from float16 queries and keys: its values
    // may differ from the pinned row's (float32, from the server) in the third digit
    const value = canvas.closest("figure").querySelector(".sa-value");
    if (reading && reading !== value) unread();
    reading = value;
    value.textContent = `${where}: p = ${v.toPrecision(3)} = ${(v * scale.tokens).toPrecision(3)}× uniform` + (preview ? " (float16 preview)" : "");
    value.title = preview ? "computed in the page from float16 queries and keys: may differ from the pinned (float32) row in the third digit; click to pin for exact values" : "";
  }

  // for tests and scripts: every hoverable layer's head-mean row (where model pixel (y, x) looks,
  // on the key grid) or column (who looks at it, on the query grid), as the hover computes it
  window.saRows = (y, x, mode = "row") =>
    data.layers.map((layer, i) => {
      const qk = live(i);
      if (!qk) return null;
      const [from, to] = mode === "row" ? [layer.queries, layer.keys] : [layer.keys, layer.queries];
      const cell = cellAt(y, x, data.image_hw, from.grid);
      const token = tokenOf(from, cell);
      const vector = mode === "row" ? rowFromQK(layer, qk, token) : columnFromQK(layer, qk, token);
      const v = reduce(vector, layer.heads, "mean");
      return { name: layer.name, cell, values: Array.from(v.subarray(to.start, to.start + to.grid[0] * to.grid[1])) };
    });

  // whether the page can follow the mouse yet: the run's queries and keys have arrived
  window.saReady = () => Boolean(data) && hover.id === data.id;

  // -- the keyboard: after a click, the arrow keys move the pinned pixel (shift: 4 pixels) ----------
  // The panels follow at once (drawn here from the run's queries and keys, as hover is); the server
  // is then asked to pin it (a "select" event of the panels), so the explanation, the other tabs and
  // an export follow too. The pin is said in words in #sa-pin, a polite live region.
  const STEPS = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  document.addEventListener("keydown", (event) => {
    const frame = document.querySelector("#input-image");
    const move = STEPS[event.key];
    if (!move || !data || !root() || !frame || !frame.contains(document.activeElement)) return;
    event.preventDefault();
    const step = event.shiftKey ? 4 : 1, [h, w] = data.image_hw, from = keyed || data.pixel;
    const clamp = (v, top) => Math.min(Math.max(v, 0), top - 1);
    keyed = [clamp(from[0] + step * move[0], h), clamp(from[1] + step * move[1], w)];
    draw(hovering || keyed);
    mark();
    announce(keyed);
    trigger("select", { index: keyed, value: "keys" });
  });
  function announce(pixel) {
    const live = document.querySelector("#sa-pin");
    if (live && data) {
      const [h, w] = data.image_hw;
      live.textContent = `pinned pixel (y, x) = (${pixel[0]}, ${pixel[1]}) of ${h}×${w}`;
    }
  }

  // -- the panels' grid: as many columns as keep every layer on screen, maps as large as that allows --
  function fit() {
    const el = root();
    if (!el || !data) return;
    const figures = el.querySelectorAll("figure.sa-panel");
    const narrow = window.innerWidth <= 720 || data.view.heads_grid;
    el.style.gridTemplateColumns = "";
    el.style.maxHeight = "";
    if (narrow || !figures.length || !el.clientWidth) return; // a phone scrolls the page; heads fill rows
    const top = el.getBoundingClientRect().top + window.scrollY;
    const room = Math.max(280, window.innerHeight - top - 8); // more layers than fit scroll in here
    el.style.maxHeight = `${room}px`;
    const gap = 12, width = el.clientWidth, n = figures.length;
    const most = Math.max(1, Math.min(n, Math.floor((width + gap) / (128 + gap))));
    const fewest = Math.min(most, Math.max(1, Math.ceil((width + gap) / (320 + gap))));
    const text = Math.max(...[...figures].map((f) => f.offsetHeight - f.querySelector(".sa-maps").offsetHeight));
    let chosen = most;
    for (let c = fewest; c <= most; c++) {
      const side = (width - gap * (c - 1)) / c, rows = Math.ceil(n / c);
      if (rows * (side + text) + (rows - 1) * 10 <= room) {
        chosen = c;
        break;
      }
    }
    el.style.gridTemplateColumns = `repeat(${chosen}, minmax(0, 1fr))`;
    if (el.scrollHeight > el.clientHeight + 1 && chosen < most) {
      el.style.gridTemplateColumns = `repeat(${chosen + 1}, minmax(0, 1fr))`; // captions wrapped more
    }
  }
  const refit = () => {
    fit();
    draw(hovering || keyed);
  };
  window.addEventListener("resize", refit);
  // whatever sits above the views (the lesson, opened or closed) moves the panels: fit them again
  const above = new ResizeObserver(refit);
  document.querySelectorAll("#sa-right > :not(#views)").forEach((e) => above.observe(e));

  const render = () => {
    load();
    if (keyed && data && keyed[0] === data.pixel[0] && keyed[1] === data.pixel[1]) keyed = null;
    fit();
    draw(hovering || keyed);
    mark();
    if (data && !keyed) announce(data.pixel);
  };
  watch("value", render);
  render();
})();
