// The prompts section of a ttsvar report: a paged, filterable prompt table and, for the prompt picked (the URL
// hash `#prompt=INDEX`, or the first prompt), each run's search tree. Rendered on demand from the JSON in
// #report-data (written by ttsvar/report/runs.py:page_data), so a run of thousands of prompts opens at once.
// Text goes in with textContent only.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var IMG = DATA.images;
  var RUNS = DATA.runs;
  var PAGE = 50;
  // tree geometry (px): node box, gaps, column header height, thumbnail height
  var W = 132, GX = 64, GY = 8, HEAD = 50, THUMB = 40;
  var SVGNS = "http://www.w3.org/2000/svg";

  var byIndex = new Map();  // prompt index -> [entry of each run, or null]
  RUNS.forEach(function (run, k) {
    run.prompts.forEach(function (p) {
      if (!byIndex.has(p.i)) byIndex.set(p.i, RUNS.map(function () { return null; }));
      byIndex.get(p.i)[k] = p;
    });
  });
  var indices = Array.from(byIndex.keys()).sort(function (a, b) { return a - b; });
  var shown = indices, page = 0, current = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function num(v, d) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    return Math.abs(v) >= 1e4 || Number.isInteger(v) ? String(v) : v.toPrecision(d || 3);
  }
  function first(i) { return byIndex.get(i).find(function (p) { return p; }); }

  // ------------------------------------------------------------------------ prompt table

  function matches(i, words) {
    var text = byIndex.get(i).map(function (p) { return p ? p.p + " " + (p.tag || "") : ""; }).join(" ");
    text = (text + " " + i).toLowerCase();
    return words.every(function (w) { return text.indexOf(w) >= 0; });
  }

  function renderTable() {
    var table = document.getElementById("prompt-table");
    table.textContent = "";
    var head = el("tr");
    ["#", "prompt", "tag"].forEach(function (h) { head.appendChild(el("th", "", h)); });
    RUNS.forEach(function (r) { head.appendChild(el("th", "", r.label)); });
    table.appendChild(head);
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (i) {
      var tr = el("tr", i === current ? "prompt-row selected" : "prompt-row");
      tr.dataset.index = i;
      var p0 = first(i);
      tr.appendChild(el("td", "idx", i));
      tr.appendChild(el("td", "", p0.p));
      tr.appendChild(el("td", "tag", p0.tag || ""));
      byIndex.get(i).forEach(function (p) {
        var td = el("td", "score");
        if (!p) td.textContent = "";
        else if (p.failed) { td.textContent = "failed"; td.classList.add("bad"); }
        else {
          td.textContent = "r " + num(p.r);
          if (p.ok === true || p.ok === false) {
            td.appendChild(el("span", p.ok ? "ok" : "bad", p.ok ? " ✓" : " ✗"));
          }
        }
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { location.hash = "prompt=" + i; });
      table.appendChild(tr);
    });
    document.getElementById("page-info").textContent =
      " page " + (page + 1) + " of " + pages + " (" + shown.length + " prompts) ";
  }

  // ------------------------------------------------------------------------ search tree

  function rowsOf(d) {
    var names = Object.keys(d.c), n = names.length ? d.c[names[0]].length : 0, rows = [];
    for (var j = 0; j < n; j++) {
      var r = {};
      names.forEach(function (k) { r[k] = d.c[k][j]; });
      rows.push(r);
    }
    return rows;
  }

  function columnTitle(d, t, rows, k) {
    var info = d.info || {}, kind = info.kind || "decision";
    var box = el("div", "col-head");
    box.appendChild(el("div", "scale", "after scale " + (d.s + 1) + (t.S ? " / " + t.S : "")));
    var line = el("div", "kind", kind);
    if (kind === "cluster" && info.k !== undefined) line.textContent += " · k=" + info.k;
    if (kind === "beam" && info.width !== undefined) line.textContent += " · width " + info.width;
    if (kind === "resample" && info.lam !== undefined) line.textContent += " · λ=" + info.lam;
    if (kind === "resample" && info.resampler && info.resampler !== "multinomial") line.textContent += " · " + info.resampler;
    if (kind === "final") line.textContent += " · " + rows.length + " candidates";
    box.appendChild(line);
    if (info.ess !== undefined && info.ess !== null) {
      var ess = el("div", "ess", "ESS " + num(info.ess) + " / " + rows.length +
        (info.resampled === false ? ", kept all" : info.resampled === true ? ", resampled" : ""));
      ess.dataset.run = k;
      ess.dataset.value = info.ess;
      box.appendChild(ess);
    }
    return box;
  }

  function nodeTitle(r) {
    return Object.keys(r).map(function (k) { return k + ": " + JSON.stringify(r[k]); }).join("\n");
  }

  function thumbFor(p, d, j, isFinal) {
    var box = el("div", "thumb");
    if (d.prev) {  // a strip of every row's preview, row j at x = j * w
      var ref = d.prev[0], h = d.prev[1], w = d.prev[2], k = THUMB / h, n = rowsOf(d).length;
      box.style.width = Math.round(w * k) + "px";
      box.style.backgroundImage = "url(\"" + IMG[ref] + "\")";
      box.style.backgroundSize = Math.round(n * w * k) + "px " + THUMB + "px";
      box.style.backgroundPosition = (-Math.round(j * w * k)) + "px 0";
      return box;
    }
    var src = null;
    if (isFinal && p.cand && p.cand[j] !== undefined) src = IMG[p.cand[j]];
    else if (isFinal && j === finalPosition(p) && p.img !== null && p.img !== undefined) src = IMG[p.img];
    if (!src) return null;
    var img = el("img");
    img.src = src;
    img.alt = "";
    box.appendChild(img);
    return box;
  }

  function finalPosition(p) {
    var d = p.t.d[p.t.d.length - 1];
    if (!d || d.pick === null || d.pick === undefined) return -1;
    return d.c.row_id ? d.c.row_id.indexOf(d.pick) : -1;
  }

  function clusterColour(c) { return "hsl(" + Math.round((c * 137.508) % 360) + ", 70%, 84%)"; }

  function renderTree(p, k) {
    var t = p.t, cols = t.d.map(rowsOf);
    var thumbs = t.d.some(function (d) { return d.prev; }) || (p.cand && Object.keys(p.cand).length > 0);
    var H = thumbs ? THUMB + 10 : 44;
    var maxRows = Math.max.apply(null, cols.map(function (c) { return c.length; }).concat([1]));
    var width = cols.length * (W + GX) - GX, height = HEAD + maxRows * (H + GY);
    var tree = el("div", "tree");
    tree.style.width = width + "px";
    tree.style.height = height + "px";
    var edges = svg("svg", { width: width, height: height, class: "edges" });
    tree.appendChild(edges);

    // the pick's lineage: its row in the last column, then parents back to the first column
    var lineage = cols.map(function () { return -1; });
    var last = cols.length - 1, pick = t.d[last] ? t.d[last].pick : null;
    if (pick !== null && pick !== undefined) {
      var want = pick;
      for (var c = last; c >= 0 && want !== null && want !== undefined; c--) {
        var pos = cols[c].findIndex(function (r) { return r.row_id === want; });
        if (pos < 0) break;
        lineage[c] = pos;
        want = cols[c][pos].parent;
      }
    }

    cols.forEach(function (rows, c) {
      var d = t.d[c], isFinal = (d.info || {}).kind === "final", x = c * (W + GX);
      var head = columnTitle(d, t, rows, k);
      head.dataset.run = k;
      head.dataset.col = c;
      head.style.left = x + "px";
      head.style.width = W + "px";
      tree.appendChild(head);
      var prevIds = c > 0 ? cols[c - 1].map(function (r) { return r.row_id; }) : [];
      rows.forEach(function (r, j) {
        var y = HEAD + j * (H + GY);
        var node = el("div", "node");
        node.style.left = x + "px";
        node.style.top = y + "px";
        node.style.width = W + "px";
        node.style.height = H + "px";
        node.dataset.run = k;
        node.dataset.col = c;
        node.dataset.scale = d.s;
        node.dataset.row = r.row_id;
        node.dataset.parent = r.parent === null || r.parent === undefined ? "" : r.parent;
        if (r.kept === false) node.classList.add("pruned");
        else if (r.kept === true) node.classList.add("kept");
        if (isFinal) node.classList.add("final");
        if (lineage[c] === j) node.classList.add("lineage");
        if (isFinal && r.row_id === pick) node.classList.add("picked");
        if (r.cluster !== undefined && r.cluster !== null) {
          node.dataset.cluster = r.cluster;
          node.style.background = clusterColour(r.cluster);
        }
        node.title = nodeTitle(r);
        var th = thumbFor(p, d, j, isFinal);
        if (th) node.appendChild(th);
        var text = el("div", "text");
        text.appendChild(el("div", "rid", "#" + r.row_id + (r.children > 1 ? " ×" + r.children : "") +
          (r.kept === false ? " pruned" : "") + (isFinal && r.row_id === pick ? " ★ pick" : "")));
        if (r.reward !== undefined && r.reward !== null) text.appendChild(el("div", "reward", "r " + num(r.reward)));
        if (r.weight !== undefined && r.weight !== null) text.appendChild(el("div", "weight", "w " + num(r.weight)));
        else if (r.cluster !== undefined && r.cluster !== null) text.appendChild(el("div", "cl", "cluster " + r.cluster));
        node.appendChild(text);
        tree.appendChild(node);

        var q = c > 0 && r.parent !== null && r.parent !== undefined ? prevIds.indexOf(r.parent) : -1;
        if (q >= 0) {
          var x0 = x - GX, y0 = HEAD + q * (H + GY) + H / 2, y1 = y + H / 2, mx = x0 + GX / 2;
          var onPath = lineage[c] === j && lineage[c - 1] === q;
          edges.appendChild(svg("path", {
            d: "M" + x0 + "," + y0 + " C" + mx + "," + y0 + " " + mx + "," + y1 + " " + x + "," + y1,
            class: onPath ? "edge lineage" : "edge",
            "data-run": k, "data-from": (c - 1) + ":" + r.parent, "data-to": c + ":" + r.row_id,
          }));
        }
      });
    });
    return tree;
  }

  function renderRun(run, p, k) {
    var block = el("div", "run-block");
    block.dataset.run = k;
    block.appendChild(el("h3", "", run.label + " · " + (run.strategy || "?") + " n=" + (run.n === null ? "?" : run.n)));
    if (!p) { block.appendChild(el("p", "hint", "this run has no result for the prompt")); return block; }
    if (p.failed) { block.appendChild(el("p", "bad", "failed: " + p.failed)); return block; }
    var row = el("div", "run-row");
    var fig = el("figure", "final-figure");
    if (p.img !== null && p.img !== undefined) {
      var img = el("img", "final-image");
      img.dataset.run = k;
      img.src = IMG[p.img];
      img.alt = "final image of prompt " + p.i;
      fig.appendChild(img);
    }
    var cap = "reward " + num(p.r, 4);
    if (p.ok === true || p.ok === false) cap += p.ok ? " · correct ✓" : " · wrong ✗";
    if (p.tf) cap += " · " + p.tf.toLocaleString("en") + " token forwards";
    fig.appendChild(el("figcaption", "", cap));
    row.appendChild(fig);
    var wrap = el("div", "tree-wrap");
    if (p.t && p.t.d.length) wrap.appendChild(renderTree(p, k));
    else wrap.appendChild(el("p", "hint", "no trace was saved for this prompt (output.traces=false, or missing)"));
    row.appendChild(wrap);
    block.appendChild(row);
    return block;
  }

  function renderDetail(i) {
    var box = document.getElementById("detail");
    box.textContent = "";
    if (!byIndex.has(i)) { box.appendChild(el("p", "hint", "no prompt with index " + i)); return; }
    current = i;
    var p0 = first(i);
    box.dataset.index = i;
    box.appendChild(el("h2", "", "Prompt " + i + (p0.tag ? " [" + p0.tag + "]" : "")));
    box.appendChild(el("p", "prompt-text", p0.p));
    box.appendChild(el("p", "legend",
      "Columns: the decisions after each scale, then the final candidates. Colour: cluster; faded, dashed: pruned; " +
      "×k: resampled k times; r: reward; w: potential weight; gold: the pick and its lineage."));
    byIndex.get(i).forEach(function (p, k) { box.appendChild(renderRun(RUNS[k], p, k)); });
  }

  // ------------------------------------------------------------------------ navigation

  function fromHash() {
    var m = /prompt=(-?\d+)/.exec(location.hash);
    var i = m ? parseInt(m[1], 10) : (indices.length ? indices[0] : null);
    if (i === null) return;
    var at = shown.indexOf(i);
    if (at >= 0) page = Math.floor(at / PAGE);
    renderDetail(i);
    renderTable();
    if (m) document.getElementById("detail").scrollIntoView();
  }

  document.getElementById("filter").addEventListener("input", function (ev) {
    var words = ev.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    shown = words.length ? indices.filter(function (i) { return matches(i, words); }) : indices;
    page = 0;
    renderTable();
  });
  document.getElementById("prev").addEventListener("click", function () { page -= 1; renderTable(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; renderTable(); });
  window.addEventListener("hashchange", fromHash);
  renderTable();
  fromHash();
})();
