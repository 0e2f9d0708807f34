/* tinybert view: draws one AttentionView (tinybert/viz/view.py) into its element.
 *
 * data.attentions[l][h][i*T + j] = round(P[l, h, i, j] * data.scale): layer l, head h, how much token i
 * attends to token j (the model's own output_attentions). data.rollout likewise, [T*T].
 * Every element lives under `root`; nothing is looked up by a global id, so views can share a page.
 */
function tinybertView(root, data) {
  "use strict";
  var t0 = performance.now();
  var T = data.tokens.length, L = data.layers, H = data.heads, SCALE = data.scale;
  var SVGNS = "http://www.w3.org/2000/svg";
  var SPECIAL = {"[CLS]": 1, "[SEP]": 1, "[PAD]": 1, "[MASK]": 1};

  function el(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function svgEl(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function weight(l, h, i, j) { return data.attentions[l][h][i * T + j] / SCALE; }
  function fmt(v) { return Math.abs(v) >= 1e-3 || v === 0 ? v.toFixed(4) : v.toExponential(1); }
  function mix(a, b, s) {             /* colour a (s = 0) to colour b (s = 1) */
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * s); }).join(",") + ")";
  }
  var WHITE = [247, 247, 247], RED = [178, 24, 43], BLUE = [33, 102, 172];
  function diverging(s) { return s < 0 ? mix(WHITE, RED, Math.min(1, -s)) : mix(WHITE, BLUE, Math.min(1, s)); }

  /* ---- heading and tokens ---- */
  var head = el("div", "", root);
  el("h2", "", head, "tinybert view");
  function count(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
  el("div", "tbv-meta", head, data.model + " · " + count(L, "layer") + " × " + count(H, "head") + " · hidden " +
     data.hidden + " · " + count(T, "token"));
  var card = el("div", "tbv-card", root);
  el("h3", "", card, data.pair === null ? "Tokens" : "Tokens (segment A, then segment B in orange)");
  var strip = el("div", "tbv-tokens", card);
  data.tokens.forEach(function (t, i) {
    var s = el("span", "tbv-tok" + (data.segments[i] ? " tbv-seg1" : "") + (SPECIAL[t] ? " tbv-special" : ""), strip, t);
    el("sub", "", s, String(i));
  });
  if (data.notes.length) {
    var ul = el("ul", "tbv-notes", card);
    data.notes.forEach(function (n) { el("li", "", ul, n); });
  }

  /* ---- prediction and attributions: one colour scale for every row ---- */
  var pred = data.prediction, attr = data.attributions;
  var attrCard = el("div", "tbv-card tbv-attributions", root);
  if (pred) {
    var where = pred.mode === "classifier" ? "label" : "[MASK] at token " + pred.position + " →";
    var p = el("div", "tbv-pred", attrCard);
    p.appendChild(document.createTextNode("Prediction: " + where + " "));
    el("b", "tbv-label", p, pred.label);
    p.appendChild(document.createTextNode("  (probability " + pred.probability.toFixed(4) + ")"));
    var top = el("div", "tbv-top", attrCard);
    pred.top.forEach(function (row) {
      el("span", "", top, row[0]);
      el("div", "tbv-bar", top).style.width = Math.max(1, 160 * row[1]) + "px";
      el("span", "tbv-meta", top, row[1].toFixed(4));
    });
  }
  el("h3", "", attrCard, attr ? "Why: each token's share of the prediction" :
     "Attention rollout: how much of each token reaches " + (pred ? "token " + pred.position : "[CLS]"));
  function attributionRow(label, values, what) {
    var row = el("div", "tbv-row", attrCard);
    el("span", "tbv-label", row, label);
    var toks = el("div", "tbv-tokens", row);
    var top = Math.max.apply(null, values.map(Math.abs)) || 1;
    values.forEach(function (v, i) {
      var s = el("span", "tbv-tok", toks, data.tokens[i]);
      s.style.background = diverging(v / top);
      if (Math.abs(v / top) > 0.6) s.style.color = "#fff";
      s.dataset.value = v;
      s.title = data.tokens[i] + ": " + what + " " + fmt(v);
    });
    el("span", "tbv-max", row, "max |·| " + fmt(top));
  }
  var position = pred ? pred.position : 0;
  var rolloutRow = data.rollout.slice(position * T, (position + 1) * T).map(function (v) { return v / SCALE; });
  if (attr) {
    attributionRow("integrated gradients", attr.integrated_gradients, "integrated gradient");
    attributionRow("gradient × input", attr.gradient_x_input, "gradient × input");
  }
  attributionRow("attention rollout", rolloutRow, "rollout");
  var legend = el("div", "tbv-legend", attrCard);
  el("span", "", legend, "−1 against");
  el("div", "tbv-legend-bar", legend);
  el("span", "", legend, "+1 for");
  el("span", "", legend, "(each row divided by its largest |value|, shown at its end; rollout is never negative)");
  if (attr) {
    el("div", "tbv-caption", attrCard, "Integrated gradients of the " + attr.output + ": they sum to " +
       fmt(attr.integrated_gradients.reduce(function (a, b) { return a + b; }, 0)) + " of f(x) − f(x′) = " +
       fmt(attr.score - attr.baseline_score) + " (completeness error " + (100 * attr.completeness_error).toFixed(2) +
       "% at " + attr.steps + " steps). Hover a token for its value.");
  }

  /* ---- attention: the layer × head grid and the head view ---- */
  var attnCard = el("div", "tbv-card", root);
  el("h3", "", attnCard, "Attention by layer and head");
  el("div", "tbv-caption", attnCard, "Click a thumbnail (colour: √weight, darker is more) to draw its head. " +
     "A line joins token i (left) to token j (right) with opacity P[i, j]; hover a token on the left to see " +
     "where it attends, on the right to see what attends to it.");
  var attn = el("div", "tbv-attn", attnCard);
  var grid = el("div", "tbv-grid", attn);
  grid.style.gridTemplateColumns = "auto repeat(" + H + ", 44px)";
  el("span", "tbv-gl", grid, "");
  for (var h = 0; h < H; h++) el("span", "tbv-gl", grid, "h" + (h + 1));
  var thumbs = [];
  function paint(canvas, values, n) {   /* values [n*n] in [0, 1] -> white to blue, by √value */
    canvas.width = n; canvas.height = n;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(n, n);
    for (var k = 0; k < n * n; k++) {
      var s = Math.sqrt(Math.max(0, values[k] / SCALE));
      img.data[4 * k] = 255 - (255 - 31) * s; img.data[4 * k + 1] = 255 - (255 - 95) * s;
      img.data[4 * k + 2] = 255 - (255 - 168) * s; img.data[4 * k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  for (var l = 0; l < L; l++) {
    el("span", "tbv-gl", grid, "layer " + (l + 1));
    for (h = 0; h < H; h++) {
      var c = el("canvas", "tbv-thumb", grid);
      c.dataset.layer = l; c.dataset.head = h;
      c.title = "layer " + (l + 1) + ", head " + (h + 1);
      paint(c, data.attentions[l][h], T);
      c.addEventListener("click", function (ev) { select(+ev.target.dataset.layer, +ev.target.dataset.head); });
      thumbs.push(c);
    }
  }

  var hv = el("div", "tbv-headview", attn);
  var hvTitle = el("h3", "", hv, "");
  var longest = Math.max.apply(null, data.tokens.map(function (t) { return t.length; }));
  var colW = Math.max(50, 8 * longest + 12), gap = 150, rowH = 19, top0 = 8;
  var width = 2 * colW + gap, height = top0 * 2 + T * rowH;
  var svg = svgEl("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height}, hv);
  var lineGroup = svgEl("g", {}, svg);
  var lines = [];
  for (var i = 0; i < T; i++) {
    for (var j = 0; j < T; j++) {
      lines.push(svgEl("line", {x1: colW, y1: top0 + (i + 0.5) * rowH, x2: colW + gap, y2: top0 + (j + 0.5) * rowH,
                                "data-i": i, "data-j": j}, lineGroup));
    }
  }
  function tokenColumn(side) {
    return data.tokens.map(function (t, i) {
      var g = svgEl("g", {"class": "tbv-token tbv-" + side, "data-index": i}, svg);
      var x = side === "left" ? 0 : colW + gap;
      svgEl("rect", {"class": "tbv-bg", x: x + 2, y: top0 + i * rowH + 1, width: colW - 4, height: rowH - 2, rx: 3}, g);
      var text = svgEl("text", {x: side === "left" ? colW - 6 : colW + gap + 6, y: top0 + (i + 0.5) * rowH + 4,
                                "text-anchor": side === "left" ? "end" : "start"}, g);
      text.textContent = t;
      g.addEventListener("mouseenter", function () { focus(side, i); });
      g.addEventListener("mouseleave", function () { focus(null, -1); });
      return g;
    });
  }
  var left = tokenColumn("left"), right = tokenColumn("right");
  var current = {layer: 0, head: 0};

  function select(layer, headIndex) {
    current = {layer: layer, head: headIndex};
    thumbs.forEach(function (c) {
      c.classList.toggle("tbv-selected", +c.dataset.layer === layer && +c.dataset.head === headIndex);
    });
    hvTitle.textContent = "Layer " + (layer + 1) + ", head " + (headIndex + 1);
    svg.setAttribute("data-layer", layer);
    svg.setAttribute("data-head", headIndex);
    lines.forEach(function (line, k) {
      var w = data.attentions[layer][headIndex][k] / SCALE;
      line.setAttribute("data-weight", w);
      line.setAttribute("stroke-opacity", w);
    });
    focus(null, -1);
  }

  function focus(side, index) {   /* hover: keep the lines of one token, shade the other column by weight */
    lines.forEach(function (line) {
      var mine = side === null || +line.getAttribute(side === "left" ? "data-i" : "data-j") === index;
      line.classList.toggle("tbv-off", !mine);
    });
    left.concat(right).forEach(function (g) {
      g.classList.remove("tbv-active");
      g.firstChild.style.fillOpacity = "";
      g.removeAttribute("data-highlight");
    });
    if (side === null) return;
    (side === "left" ? left : right)[index].classList.add("tbv-active");
    (side === "left" ? right : left).forEach(function (g, k) {
      var w = side === "left" ? weight(current.layer, current.head, index, k) : weight(current.layer, current.head, k, index);
      g.firstChild.style.fillOpacity = Math.sqrt(w) * 0.8;
      g.setAttribute("data-highlight", w);
    });
  }

  /* ---- attention rollout: the whole matrix ---- */
  var rCard = el("div", "tbv-card", root);
  el("h3", "", rCard, "Attention rollout  R = Â_L ⋯ Â_1,  Â = ½ mean over heads of P + ½ I");
  el("div", "tbv-caption", rCard, "Row i: how much of each token's information reaches position i through all " +
     "layers, the residual path counted (Abnar & Zuidema, 2020). Colour: √R. Hover a cell for its value.");
  var cell = Math.max(4, Math.min(18, Math.floor(460 / T)));
  var margin = cell >= 9 ? Math.min(140, 7 * longest + 10) : 0;
  var rc = el("canvas", "tbv-rollout", rCard);
  var ratio = window.devicePixelRatio || 1, side = margin + T * cell + 2;
  rc.width = side * ratio; rc.height = side * ratio;
  rc.style.width = side + "px"; rc.style.height = side + "px";
  var ctx = rc.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.font = Math.min(12, cell - 1) + "px ui-monospace, 'DejaVu Sans Mono', monospace";
  ctx.fillStyle = "#1d2430";
  for (i = 0; i < T; i++) {
    if (margin) {
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(data.tokens[i], margin - 4, margin + (i + 0.5) * cell);
      ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left"; ctx.fillText(data.tokens[i], 0, 0); ctx.restore();
    }
    for (j = 0; j < T; j++) {
      ctx.fillStyle = mix([255, 255, 255], [31, 95, 168], Math.sqrt(data.rollout[i * T + j] / SCALE));
      ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
    }
    ctx.fillStyle = "#1d2430";
  }
  rc.addEventListener("mousemove", function (ev) {
    var box = rc.getBoundingClientRect();
    var a = Math.floor((ev.clientY - box.top - margin) / cell), b = Math.floor((ev.clientX - box.left - margin) / cell);
    rc.title = a >= 0 && b >= 0 && a < T && b < T ?
      "R[" + a + " " + data.tokens[a] + ", " + b + " " + data.tokens[b] + "] = " + fmt(data.rollout[a * T + b] / SCALE) : "";
  });

  select(0, 0);
  root.setAttribute("data-render-ms", (performance.now() - t0).toFixed(1));
  root.setAttribute("data-ready", "1");
}
