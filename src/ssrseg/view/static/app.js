// ssrseg view: the gallery, the detail view and the summary of one output folder.
// Everything it shows is in window.SSRSEG_VIEW (data.js, written by `ssrseg view`); images
// are files beside this page. No network: it works from file://.
(function () {
  "use strict";
  var D = window.SSRSEG_VIEW;
  var PAGE = 60; // tiles drawn at a time: 10,000 images stay fast
  var $ = function (id) { return document.getElementById(id); };
  var ZOOM_TO = 384; // "auto" zoom: small images are enlarged by a whole factor up to this
  var state = { layer: "", opacity: 0.6, sort: "name", cls: "", split: "", page: 0, open: null, zoom: "auto" };
  var shown = [];

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(1); }
  function slug(name) {
    return name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "") || "layer";
  }
  // JPEG for the photo and the CAM heat maps ("CAM (refined): dog"), PNG for label layers
  function ext(name) { return name === "image" || /^CAM \(.*\): /.test(name) ? "jpg" : "png"; }
  function has(item, name) {
    var i = D.layers.indexOf(name);
    return item.L !== undefined && item.L.indexOf(i) >= 0;
  }
  function src(item, name, thumb) {
    return item.d + "/" + slug(name) + (thumb ? ".t." : ".") + ext(name);
  }

  // ------------------------------------------------------------------ controls
  function fillControls() {
    $("title").textContent = "ssrseg view \u2014 " + D.title;
    document.title = "ssrseg view: " + D.title;
    D.notes.forEach(function (n) { $("notes").appendChild(el("li", {}, n)); });
    var layer = $("layer");
    layer.appendChild(el("option", { value: "" }, "none"));
    D.layers.forEach(function (n) { if (n !== "image") { layer.appendChild(el("option", { value: n }, n)); } });
    var first = ["prediction", "pseudo label", "CAM labels", "ground truth"].filter(function (n) {
      return D.layers.indexOf(n) >= 0;
    })[0];
    state.layer = first || "";
    layer.value = state.layer;
    D.classes.slice(1).forEach(function (n, c) { $("class").appendChild(el("option", { value: String(c) }, n)); });
    D.splits.forEach(function (s) { $("split").appendChild(el("option", { value: s }, s)); });
    $("opacity").value = String(Math.round(state.opacity * 100));
    layer.onchange = function () { state.layer = layer.value; refreshOverlays(); };
    $("opacity").oninput = function () { state.opacity = $("opacity").value / 100; refreshOverlays(); };
    $("sort").onchange = function () { state.sort = $("sort").value; state.page = 0; update(); };
    $("class").onchange = function () { state.cls = $("class").value; state.page = 0; update(); };
    $("split").onchange = function () { state.split = $("split").value; state.page = 0; update(); };
    $("prev").onclick = function () { if (state.page > 0) { state.page--; draw(); } };
    $("next").onclick = function () {
      if ((state.page + 1) * PAGE < shown.length) { state.page++; draw(); }
    };
    $("close").onclick = function () { state.open = null; $("detail").hidden = true; };
    $("zoom").onchange = function () { state.zoom = $("zoom").value; applyZoom(); };
    // left / right arrows: the previous / next image of the current order in the detail view
    document.addEventListener("keydown", function (ev) {
      if (!state.open || ev.target.tagName === "SELECT" || ev.target.tagName === "INPUT") { return; }
      var step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
      if (!step) { return; }
      var at = shown.indexOf(state.open) + step;
      while (at >= 0 && at < shown.length && shown[at].e !== undefined) { at += step; } // placeholders
      if (at >= 0 && at < shown.length) { openDetail(shown[at]); }
    });
  }

  // ------------------------------------------------------------------ gallery
  function selected() {
    var cls = state.cls === "" ? null : Number(state.cls);
    var out = D.items.filter(function (it) {
      return (cls === null || it.c.indexOf(cls) >= 0) && (state.split === "" || it.s === state.split);
    });
    var byName = function (a, b) { return a.k < b.k ? -1 : a.k > b.k ? 1 : 0; };
    if (state.sort === "name") { return out.sort(byName); }
    var sign = state.sort === "miou-asc" ? 1 : -1;
    return out.sort(function (a, b) {
      var ma = a.m === undefined || a.m === null, mb = b.m === undefined || b.m === null;
      if (ma || mb) { return ma === mb ? byName(a, b) : ma ? 1 : -1; } // unscored last
      return a.m === b.m ? byName(a, b) : sign * (a.m - b.m);
    });
  }

  function tile(item) {
    var t = el("div", { "class": "tile", "data-key": item.k, "title": item.k });
    if (item.e !== undefined) {
      t.className = "tile placeholder";
      t.appendChild(el("div", { "class": "msg" }, item.e));
      t.appendChild(el("div", { "class": "cap" }, item.id));
      return t;
    }
    var stack = el("div", { "class": "stack" });
    stack.appendChild(el("img", { "class": "base", loading: "lazy", src: src(item, "image", true), alt: item.id }));
    var ov = el("img", { "class": "ov", loading: "lazy", alt: "" });
    stack.appendChild(ov);
    t.appendChild(stack);
    t.appendChild(el("div", { "class": "cap" }, item.id));
    var score = item.m !== undefined && item.m !== null ? "mIoU " + pct(item.m) + " (" + item.ml + ")" : "\u00a0";
    t.appendChild(el("div", { "class": "cap score" }, score));
    t.onclick = function () { openDetail(item); };
    setOverlay(ov, item, true);
    return t;
  }

  function setOverlay(img, item, thumb) {
    if (state.layer && has(item, state.layer)) {
      img.src = src(item, state.layer, thumb);
      img.style.display = "";
    } else {
      img.removeAttribute("src");
      img.style.display = "none";
    }
    img.style.opacity = String(state.opacity);
  }

  function refreshOverlays() {
    var byKey = {};
    shown.forEach(function (it) { byKey[it.k] = it; });
    Array.prototype.forEach.call(document.querySelectorAll("#gallery .tile"), function (t) {
      var ov = t.querySelector("img.ov");
      if (ov) { setOverlay(ov, byKey[t.getAttribute("data-key")], true); }
    });
    if (state.open) { setOverlay($("detail-ov"), state.open, false); }
  }

  function draw() {
    var g = $("gallery");
    g.textContent = "";
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    shown.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (it) { g.appendChild(tile(it)); });
    $("page").textContent = "page " + (state.page + 1) + " / " + pages;
    $("count").textContent = shown.length + " of " + D.items.length + " images";
  }

  function update() { shown = selected(); draw(); }

  // ------------------------------------------------------------------ detail
  function openDetail(item) {
    state.open = item;
    $("detail").hidden = false;
    $("detail-title").textContent = item.k;
    var info = item.w + "\u00d7" + item.h;
    if (item.m !== undefined && item.m !== null) { info += ", mIoU " + pct(item.m) + " (" + item.ml + ")"; }
    $("detail-info").textContent = info;
    var base = $("detail-base");
    base.onload = applyZoom;
    base.src = src(item, "image", false);
    setOverlay($("detail-ov"), item, false);
    var legend = $("legend");
    legend.textContent = "";
    item.c.forEach(function (c) {
      var s = el("span", { "class": "cls" });
      var sw = el("i");
      var rgb = D.palette[c + 1] || [0, 0, 0];
      sw.style.background = "rgb(" + rgb.join(",") + ")";
      s.appendChild(sw);
      s.appendChild(document.createTextNode(D.classes[c + 1] || "class " + c));
      legend.appendChild(s);
    });
    $("detail").scrollIntoView();
  }

  // whole factors only: each image pixel becomes z x z screen pixels (no blending)
  function applyZoom() {
    var base = $("detail-base"), w = base.naturalWidth, h = base.naturalHeight;
    if (!w || !h) { return; }
    var z = state.zoom === "auto" ? Math.max(1, Math.floor(ZOOM_TO / Math.max(w, h))) : Number(state.zoom);
    base.style.width = w * z + "px";
    base.style.height = h * z + "px";
    $("stage").setAttribute("data-zoom", String(z));
  }

  // ------------------------------------------------------------------ summary
  function metricSources() {
    var out = [];
    Object.keys(D.computed).forEach(function (k) { out.push(["computed: " + k, D.computed[k]]); });
    Object.keys(D.recorded).forEach(function (k) { out.push(["recorded: " + k, D.recorded[k]]); });
    return out;
  }

  function drawMetrics(m) {
    var box = $("perclass");
    box.textContent = "";
    if (!m) { box.textContent = "no ground truth to score against"; drawConfusion(null); return; }
    var t = el("table", { id: "perclass-table" });
    var head = el("tr");
    ["class", "IoU", "precision", "recall"].forEach(function (h) { head.appendChild(el("th", {}, h)); });
    t.appendChild(head);
    D.classes.forEach(function (name, c) {
      var r = el("tr");
      r.appendChild(el("td", {}, name));
      r.appendChild(el("td", {}, pct(m.iou ? m.iou[c] : null)));
      r.appendChild(el("td", {}, pct(m.class_precision ? m.class_precision[c] : null)));
      r.appendChild(el("td", {}, pct(m.class_recall ? m.class_recall[c] : null)));
      t.appendChild(r);
    });
    var mean = el("tr");
    ["mean", pct(m.miou), pct(m.precision), pct(m.recall)].forEach(function (v) { mean.appendChild(el("th", {}, v)); });
    t.appendChild(mean);
    box.appendChild(t);
    if (m.images !== undefined) { box.appendChild(el("p", {}, m.images + " images")); }
    drawConfusion(m.hist || null);
  }

  function drawConfusion(hist) {
    var cv = $("confusion");
    if (!hist) { cv.width = 1; cv.height = 1; return; }
    var k = hist.length, cell = Math.max(8, Math.min(28, Math.floor(560 / k))), pad = 110;
    cv.width = pad + k * cell;
    cv.height = pad + k * cell;
    var ctx = cv.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, cv.width, cv.height);
    ctx.font = Math.min(12, cell) + "px sans-serif";
    for (var g = 0; g < k; g++) {
      var total = hist[g].reduce(function (a, b) { return a + b; }, 0);
      for (var p = 0; p < k; p++) {
        var share = total > 0 ? hist[g][p] / total : 0;
        var v = Math.round(255 * (1 - share));
        ctx.fillStyle = "rgb(" + v + "," + v + ",255)";
        ctx.fillRect(pad + p * cell, pad + g * cell, cell - 1, cell - 1);
      }
      ctx.fillStyle = "#222";
      ctx.textAlign = "right";
      ctx.fillText(D.classes[g] || String(g), pad - 4, pad + g * cell + cell * 0.75);
      ctx.save();
      ctx.translate(pad + g * cell + cell * 0.75, pad - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(D.classes[g] || String(g), 0, 0);
      ctx.restore();
    }
  }

  function fmt(v) { return typeof v === "number" ? v.toFixed(1) : "-"; }

  function drawTables() {
    var box = $("tables");
    if (!D.tables.length) { box.textContent = "no report tables in this folder"; return; }
    D.tables.forEach(function (tab) {
      box.appendChild(el("h3", {}, tab.title));
      var cols = tab.columns;
      var withPaper = cols.filter(function (c) { return tab.rows.some(function (r) { return r.paper && c in r.paper; }); });
      var t = el("table", { "class": "report", "data-key": tab.key });
      var head = el("tr");
      head.appendChild(el("th", {}, "row"));
      cols.forEach(function (c) { head.appendChild(el("th", {}, c)); });
      withPaper.forEach(function (c) { head.appendChild(el("th", {}, "paper " + c)); });
      withPaper.forEach(function (c) { head.appendChild(el("th", {}, "diff " + c)); });
      t.appendChild(head);
      tab.rows.forEach(function (r) {
        var tr = el("tr");
        tr.appendChild(el("td", {}, r.name + (r.note ? " (" + r.note + ")" : "")));
        cols.forEach(function (c) { tr.appendChild(el("td", {}, fmt((r.measured || {})[c]))); });
        withPaper.forEach(function (c) { tr.appendChild(el("td", {}, fmt((r.paper || {})[c]))); });
        withPaper.forEach(function (c) { tr.appendChild(el("td", {}, fmt((r.diff || {})[c]))); });
        t.appendChild(tr);
      });
      box.appendChild(t);
      if (tab.note) { box.appendChild(el("p", {}, tab.note)); }
    });
  }

  function drawSummary() {
    var sel = $("metric-source");
    var sources = metricSources();
    sources.forEach(function (s, i) { sel.appendChild(el("option", { value: String(i) }, s[0])); });
    sel.onchange = function () { drawMetrics(sources[Number(sel.value)][1]); };
    drawMetrics(sources.length ? sources[0][1] : null);
    drawTables();
    $("config").textContent = D.config || "no configuration recorded";
  }

  fillControls();
  drawSummary();
  update();
  document.body.setAttribute("data-ready", "1");
})();
