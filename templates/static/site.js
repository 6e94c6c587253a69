/* dmd2report site behaviour: nearest-point hover, neighbour panel, selection grid and CSV,
 * layer switch, class search and #class= links, sortable tables, dark-mode figure colours.
 * Data strings only ever reach the page through textContent, never as markup.
 * Figures are found by the model names set in dmd2report/report/figures.py. */
(function () {
  "use strict";
  const figs = {};
  const Site = window.DMD2Site = { figs: figs, ready: false, lastHover: null };
  const data = () => window.DMD2_DATA;
  let pointer = { x: 0, y: 0 };
  let card = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function thumb(index, px) {
    const s = data().sprites;
    if (index === null || index === undefined || index < 0) {
      const m = el("span", "thumb missing", "–");
      m.style.width = m.style.height = px + "px";
      return m;
    }
    const per = s.cols * s.rows, sheet = Math.floor(index / per), within = index % per;
    const t = el("span", "thumb sheet-" + sheet);
    t.style.width = t.style.height = px + "px";
    t.style.backgroundPosition = "-" + (within % s.cols) * px + "px -" + Math.floor(within / s.cols) * px + "px";
    t.style.backgroundSize = s.cols * px + "px " + s.rows * px + "px";
    t.setAttribute("role", "img");
    return t;
  }
  Site.thumb = thumb;

  // ---- Bokeh models ----
  function docs() { return (window.Bokeh && Bokeh.documents) || []; }
  function models(doc) {
    const all = doc.all_models || (doc._all_models && doc._all_models.values()) || [];
    return Array.from(all);
  }
  function byName(name) {
    for (const doc of docs()) { const m = doc.get_model_by_name(name); if (m) return m; }
    return null;
  }
  function byPrefix(prefix) {
    const out = [];
    for (const doc of docs()) for (const m of models(doc)) if (m.name && m.name.startsWith(prefix)) out.push(m);
    return out.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  }
  function resolve(name) {
    if (figs[name]) return figs[name];
    const fig = byName(name);
    if (!fig) return null;
    const pts = byPrefix(name + ":pt:");
    return figs[name] = {
      name: name, fig: fig, pts: pts,
      real: pts.filter(r => r.name === name + ":pt:real"),
      gens: pts.filter(r => r.name.startsWith(name + ":pt:gen:")),
      hl: byName(name + ":hl"), focus: byName(name + ":focus"), index: null,
      traj: { seg: byName(name + ":traj:seg"), pt: byName(name + ":traj:pt"), label: byName(name + ":traj:label"),
              real: byName(name + ":traj:real") },
    };
  }
  Site.resolve = resolve;
  Site.pointCount = function (name) {
    const f = resolve(name);
    return f ? f.pts.reduce((n, r) => n + r.data_source.data.x.length, 0) : 0;
  };

  // ---- nearest point: a uniform grid over all point renderers of a figure ----
  function buildIndex(f) {
    let n = 0;
    for (const r of f.pts) n += r.data_source.data.x.length;
    const xs = new Float64Array(n), ys = new Float64Array(n), rows = new Int32Array(n), rend = new Uint16Array(n);
    let i = 0, x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    f.pts.forEach((r, ri) => {
      const d = r.data_source.data;
      for (let j = 0; j < d.x.length; j++, i++) {
        xs[i] = d.x[j]; ys[i] = d.y[j]; rows[i] = d.row[j]; rend[i] = ri;
        if (xs[i] < x0) x0 = xs[i]; if (xs[i] > x1) x1 = xs[i];
        if (ys[i] < y0) y0 = ys[i]; if (ys[i] > y1) y1 = ys[i];
      }
    });
    const G = Math.max(8, Math.min(512, Math.round(Math.sqrt(n / 2))));
    const cw = (x1 - x0) / G || 1, ch = (y1 - y0) / G || 1;
    const cell = new Int32Array(n), start = new Int32Array(G * G + 1);
    for (let j = 0; j < n; j++) {
      const cx = Math.min(G - 1, Math.floor((xs[j] - x0) / cw)), cy = Math.min(G - 1, Math.floor((ys[j] - y0) / ch));
      cell[j] = cy * G + cx; start[cell[j] + 1]++;
    }
    for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
    const fill = start.slice(0, G * G), order = new Int32Array(n);
    for (let j = 0; j < n; j++) order[fill[cell[j]]++] = j;
    return { xs, ys, rows, rend, G, x0, y0, cw, ch, start, order };
  }
  function nearest(f, x, y, radiusPx) {
    const ix = f.index || (f.index = buildIndex(f));
    const fig = f.fig, xr = fig.x_range, yr = fig.y_range;
    const kx = Math.abs(fig.inner_width / (xr.end - xr.start)), ky = Math.abs(fig.inner_height / (yr.end - yr.start));
    if (!isFinite(kx) || !isFinite(ky) || kx === 0 || ky === 0) return null;
    const rx = radiusPx / kx, ry = radiusPx / ky, G = ix.G;
    const cx0 = Math.max(0, Math.floor((x - rx - ix.x0) / ix.cw)), cx1 = Math.min(G - 1, Math.floor((x + rx - ix.x0) / ix.cw));
    const cy0 = Math.max(0, Math.floor((y - ry - ix.y0) / ix.ch)), cy1 = Math.min(G - 1, Math.floor((y + ry - ix.y0) / ix.ch));
    let best = -1, bestD = radiusPx * radiusPx;
    const visible = f.pts.map(r => r.visible);
    for (let cy = cy0; cy <= cy1; cy++) for (let cx = cx0; cx <= cx1; cx++) {
      const c = cy * G + cx;
      for (let k = ix.start[c]; k < ix.start[c + 1]; k++) {
        const j = ix.order[k];
        if (!visible[ix.rend[j]]) continue;
        const dx = (ix.xs[j] - x) * kx, dy = (ix.ys[j] - y) * ky, d2 = dx * dx + dy * dy;
        // Ties go to generated points, drawn on top of the real layer.
        if (d2 < bestD || (d2 === bestD && best >= 0 && ix.rend[j] > ix.rend[best])) { bestD = d2; best = j; }
      }
    }
    return best < 0 ? null : ix.rows[best];
  }

  // ---- describing a point ----
  function className(c) {
    const e = data().classes[String(c)];
    return c < 0 ? "no class" : (e ? c + " · " + e[1] : String(c));
  }
  function describe(row) {
    const P = data().points, gen = P.gen[row] === 1;
    const dl = el("dl");
    const add = (k, v) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", v)); };
    add("id", P.id[row]);
    add("set", gen ? "generated · " + data().variants[P.variant[row]] : "real");
    add("class", className(P.cls[row]));
    const c = data().classes[String(P.cls[row])];
    if (c) add("synset", c[0]);
    add(gen ? "seed" : "source", P.src[row]);
    // Trust: the share of its nearest real neighbours in activation space that stay its neighbours on the map.
    if (P.trust[row] !== null) add("map trust", P.trust[row].toFixed(2));
    return dl;
  }
  function showCard(row) {
    if (!card) { card = el("div", "hover-card"); card.id = "dmd2-hover"; card.hidden = true; document.body.appendChild(card); }
    if (Site.cardRow !== row) {
      card.replaceChildren(thumb(data().points.thumb[row], 72), describe(row));
      card.dataset.row = row;
      delete card.dataset.traj;
      Site.cardRow = row;
    }
    placeCard();
  }
  function placeCard() {
    const w = card.offsetWidth || 300, h = card.offsetHeight || 90;
    let left = pointer.x + 16, top = pointer.y + 16;
    if (left + w > window.innerWidth - 4) left = pointer.x - w - 16;
    if (top + h > window.innerHeight - 4) top = pointer.y - h - 16;
    card.style.left = Math.max(4, left) + "px";
    card.style.top = Math.max(4, top) + "px";
    card.hidden = false;
  }
  function hideCard() { if (card) card.hidden = true; Site.cardRow = null; }

  // ---- few-step paths: their own small layers, searched linearly (a few hundred points) ----
  function nearestTraj(f, x, y, radiusPx) {
    const fig = f.fig, xr = fig.x_range, yr = fig.y_range;
    const kx = Math.abs(fig.inner_width / (xr.end - xr.start)), ky = Math.abs(fig.inner_height / (yr.end - yr.start));
    let best = null, bestD = radiusPx * radiusPx;
    for (const kind of ["pt", "real"]) {
      const r = f.traj && f.traj[kind];
      if (!r || !r.visible) continue;
      const d = r.data_source.data;
      for (let j = 0; j < d.x.length; j++) {
        const dx = (d.x[j] - x) * kx, dy = (d.y[j] - y) * ky, d2 = dx * dx + dy * dy;
        if (d2 < bestD) { bestD = d2; best = { kind: kind, row: d.row[j] }; }
      }
    }
    return best;
  }
  function trajCard(hit) {
    const T = data().traj, real = hit.kind === "real", P = real ? T.real : T.steps, i = hit.row;
    const sigma = T.sigmas[P.step[i]], S = T.sigmas.length;
    const dl = el("dl");
    const add = (k, v) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", v)); };
    add("set", real ? "real, noised to σ " + sigma : "few-step path " + P.path[i] + " (" + T.conditioning + ")");
    add("step", (P.step[i] + 1) + " of " + S + " · σ " + sigma);
    add("class", className(P.cls[i]));
    add(real ? "source" : "seed", P.src[i]);
    const imgs = el("div", "thumbs");
    imgs.appendChild(thumb(P.thumb[i], 72));
    imgs.appendChild(el("span", "", real ? "model output" : "this step"));
    const parts = [imgs];
    if (!real) {
      const fin = el("div", "thumbs");
      fin.appendChild(thumb(P.final[i], 72));
      fin.appendChild(el("span", "", "final (σ " + T.sigmas[S - 1] + ")"));
      parts.push(fin);
    }
    parts.push(dl);
    return parts;
  }
  function showTrajCard(hit) {
    if (!card) { card = el("div", "hover-card"); card.id = "dmd2-hover"; card.hidden = true; document.body.appendChild(card); }
    const key = "traj:" + hit.kind + ":" + hit.row;
    if (Site.cardRow !== key) {
      card.replaceChildren(...trajCard(hit));
      delete card.dataset.row;
      card.dataset.traj = hit.kind + ":" + hit.row;
      Site.cardRow = key;
    }
    placeCard();
  }
  Site.trajSegments = function (name) {
    const f = resolve(name);
    return f && f.traj.seg ? f.traj.seg.data_source.data.x0.length : 0;
  };
  // Which paths are drawn: the shown few of every class (as rendered), plus every stored path of the
  // classes in `classes` (a class search or #class=). All paths are in DMD2_DATA.traj; the segment and
  // point sources get rebuilt columns (same keys as figures.trajectory_columns), so hover keeps working.
  Site.drawTrajectories = function (name, classes) {
    const f = resolve(name), T = data().traj;
    if (!f || !T || !f.traj.seg || !f.traj.pt) return;
    const want = new Set(classes || []), P = T.steps, prev = new Map();
    const seg = { x0: [], y0: [], x1: [], y1: [], cls: [] };
    const pt = { x: [], y: [], row: [], step: [], cls: [], color: [], label: [] };
    const paths = new Set(), expanded = new Set(), hit = new Set();
    for (let i = 0; i < P.path.length; i++) {  // rows hold each path's steps in order
      if (!P.shown[i] && !want.has(P.cls[i])) continue;
      if (P.x[i] === null || P.y[i] === null) continue;
      const p = P.path[i], j = prev.get(p);
      if (j !== undefined && P.step[j] === P.step[i] - 1) {
        seg.x0.push(P.x[j]); seg.y0.push(P.y[j]); seg.x1.push(P.x[i]); seg.y1.push(P.y[i]); seg.cls.push(P.cls[i]);
      }
      prev.set(p, i);
      pt.x.push(P.x[i]); pt.y.push(P.y[i]); pt.row.push(i); pt.step.push(P.step[i]); pt.cls.push(P.cls[i]);
      pt.color.push(T.colours[P.step[i]]); pt.label.push(T.labels[P.step[i]]);
      paths.add(p);
      if (want.has(P.cls[i])) { expanded.add(p); hit.add(P.cls[i]); }
    }
    f.traj.seg.data_source.data = seg;
    f.traj.pt.data_source.data = pt;  // the sigma labels share this source
    const status = document.querySelector('[data-traj-status="' + name + '"]');
    if (status) {
      const base = paths.size + " drawn (the first " + T.perClass + " of each class";
      status.textContent = !hit.size ? base + ")" : base + "; all " + expanded.size + " of " +
        (hit.size === 1 ? className([...hit][0]) : hit.size + " classes") + ")";
      status.dataset.paths = paths.size;
    }
  };
  Site.setTrajectory = function (name, which, on) {
    const f = resolve(name);
    if (!f) return;
    const rs = which === "real" ? [f.traj.real] : [f.traj.seg, f.traj.pt, f.traj.label];
    rs.forEach(r => { if (r) r.visible = on; });
  };

  Site.hover = function (name, ev) {
    const f = resolve(name);
    if (!f || !f.pts.length) return;
    const hit = f.traj ? nearestTraj(f, ev.x, ev.y, 10) : null;
    if (hit) { showTrajCard(hit); Site.lastHover = { traj: hit, at: performance.now() }; return; }
    const row = nearest(f, ev.x, ev.y, 14);
    if (row === null) hideCard(); else showCard(row);
    Site.lastHover = { row: row, at: performance.now() };
  };
  Site.unhover = function () { hideCard(); };

  // ---- neighbour panel ----
  function nbrList(rows, dists, onPick, classes) {
    const grid = el("div", "nbr-grid");
    rows.forEach((j, i) => {
      if (j < 0) {
        // A neighbour among all N points that this site does not carry (past report.max_points): its
        // distance and class are known, its image and id are not in the site. Padding has no distance.
        if (!dists || dists[i] === null || !classes) return;
        const item = el("div", "nbr outside");
        item.title = "not in this site (" + className(classes[i]) + "): the site carries a sample of the points";
        item.appendChild(thumb(-1, 56));
        item.appendChild(el("span", "", "d " + dists[i].toFixed(3)));
        grid.appendChild(item);
        return;
      }
      const item = el("div", "nbr");
      item.title = data().points.id[j] + " (" + className(data().points.cls[j]) + ")";
      item.appendChild(thumb(data().points.thumb[j], 56));
      item.appendChild(el("span", "", dists ? "d " + (dists[i] === null ? "–" : dists[i].toFixed(3)) : data().points.id[j]));
      item.addEventListener("click", () => onPick(j));
      grid.appendChild(item);
    });
    return grid;
  }
  function showNeighbours(name, row) {
    const panel = document.querySelector('[data-nbr-for="' + name + '"]');
    const f = resolve(name);
    if (!panel) return;
    const d = data(), P = d.points, k = d.nb.k, pick = j => showNeighbours(name, j);
    const parts = [el("h2", "", "Neighbours")];
    const head = el("div", "point-head");
    head.appendChild(thumb(P.thumb[row], 96));
    head.appendChild(describe(row));
    parts.push(head);
    if (P.gen[row] === 0) {
      const C = d.coveredBy, by = C.rows.slice(C.off[row], C.off[row + 1]), nBy = C.n[row];
      const p = el("p");
      p.appendChild(el("span", "badge " + (P.covered[row] ? "covered" : "uncovered"), P.covered[row] ? "covered" : "not covered"));
      p.appendChild(document.createTextNode(P.covered[row]
        ? " by " + nBy + (nBy === 1 ? " generated sample" : " generated samples") + " (inside this point's k-NN ball)" +
          (by.length < nBy ? "; " + by.length + " shown" : "")
        : " no generated sample lies inside this point's k-NN ball"));
      parts.push(p);
      if (by.length) parts.push(nbrList(by.slice(0, 12), null, pick));
    }
    const layer = d.nb.layer ? " (" + d.nb.layer + ")" : "";
    parts.push(el("h3", "", k + " nearest real in activation space" + layer));
    parts.push(nbrList(d.nb.ri.slice(row * k, row * k + k), d.nb.rd.slice(row * k, row * k + k), pick, d.nb.rc.slice(row * k, row * k + k)));
    parts.push(el("h3", "", k + " nearest generated in activation space" + layer));
    parts.push(nbrList(d.nb.gi.slice(row * k, row * k + k), d.nb.gd.slice(row * k, row * k + k), pick, d.nb.gc.slice(row * k, row * k + k)));
    if (d.site.capped) parts.push(el("p", "muted small", "Neighbours are the nearest of all " + d.site.total.toLocaleString("en") +
      " points; those without an image are not among the points this site carries."));
    panel.replaceChildren(...parts);
    panel.dataset.row = row;
    if (f && f.focus) {
      const nb = d.nb.ri.slice(row * k, row * k + k).concat(d.nb.gi.slice(row * k, row * k + k)).filter(j => j >= 0);
      const all = [row].concat(nb);
      f.focus.data_source.data = { x: all.map(j => P.x[j]), y: all.map(j => P.y[j]), size: all.map((j, i) => i ? 10 : 20) };
    }
  }
  Site.showNeighbours = showNeighbours;
  Site.tap = function (name, ev) {
    const f = resolve(name);
    if (!f) return;
    const row = nearest(f, ev.x, ev.y, 14);
    if (row !== null) showNeighbours(name, row);
  };

  // ---- selection grid and CSV ----
  const pendingSel = {};
  Site.selected = function (name) {
    if (pendingSel[name]) return;
    pendingSel[name] = true;
    requestAnimationFrame(() => { pendingSel[name] = false; renderSelection(name); });
  };
  function selectedRows(f) {
    const rows = [];
    for (const r of f.pts) {
      const src = r.data_source, idx = src.selected.indices;
      for (const i of idx) rows.push(src.data.row[i]);
    }
    return rows;
  }
  function csvField(v) { const s = String(v); return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  Site.selectionCsv = function (rows) {
    const d = data(), P = d.points, lines = ["sample_id,set,variant,class_id,class_name,source"];
    // Past report.max_points only the drawn sample can be selected: the file says so on its first line
    // (a '#' comment: pandas.read_csv(..., comment="#") and most tools skip it).
    if (d.site.capped) lines.unshift("# selection among the " + d.site.drawn + " points drawn on the map, a class-balanced sample of all " +
      d.site.total + " points (report.max_points); points not drawn cannot be selected");
    for (const j of rows) {
      const c = d.classes[String(P.cls[j])];
      lines.push([P.id[j], P.gen[j] ? "generated" : "real", d.variants[P.variant[j]], P.cls[j], c ? c[1] : "", P.src[j]].map(csvField).join(","));
    }
    return lines.join("\n") + "\n";
  };
  function renderSelection(name) {
    const f = resolve(name), panel = document.querySelector('[data-sel-for="' + name + '"]');
    if (!f || !panel) return;
    const rows = selectedRows(f), P = data().points;
    const nReal = rows.filter(j => !P.gen[j]).length;
    const parts = [el("h2", "", "Selection: " + rows.length + " (" + nReal + " real, " + (rows.length - nReal) + " generated)")];
    if (rows.length) {
      const actions = el("div", "sel-actions");
      const dl = el("button", "", "Download ids (CSV)");
      dl.type = "button";
      dl.dataset.csv = name;
      dl.addEventListener("click", () => {
        const a = document.createElement("a");
        a.href = URL.createObjectURL(new Blob([Site.selectionCsv(rows)], { type: "text/csv" }));
        a.download = "selection.csv";
        document.body.appendChild(a); a.click(); a.remove();
      });
      actions.appendChild(dl);
      if (rows.length > 120) actions.appendChild(el("span", "muted small", "showing the first 120"));
      parts.push(actions);
      const grid = el("div", "thumb-grid");
      rows.slice(0, 120).forEach(j => {
        const t = thumb(P.thumb[j], 48);
        t.title = P.id[j] + " · " + className(P.cls[j]);
        t.style.cursor = "pointer";
        t.addEventListener("click", () => showNeighbours(name, j));
        grid.appendChild(t);
      });
      parts.push(grid);
    } else parts.push(el("p", "muted", "Nothing selected."));
    panel.replaceChildren(...parts);
  }

  // ---- layer switch ----
  Site.setLayers = function (name, which) {
    const f = resolve(name);
    if (!f) return;
    f.real.forEach(r => { r.visible = which !== "generated"; });
    f.gens.forEach(r => { r.visible = which !== "real"; });
  };

  // ---- class search and #class= ----
  function matchClasses(q) {
    const cls = data().classes;
    q = q.trim().toLowerCase();
    if (!q) return [];
    const id = q.match(/^(-?\d+)(\s|$)/);
    if (id) return cls[id[1]] ? [Number(id[1])] : [];
    const ids = Object.keys(cls);
    const syn = ids.filter(c => cls[c][0].toLowerCase() === q);
    if (syn.length) return syn.map(Number);
    const exact = ids.filter(c => cls[c][1].toLowerCase() === q);
    if (exact.length) return exact.map(Number);
    return ids.filter(c => cls[c][1].toLowerCase().includes(q)).map(Number);
  }
  Site.search = function (name, q, zoom) {
    const f = resolve(name), status = document.querySelector('[data-search-status="' + name + '"]');
    if (!f || !f.hl) return;
    const P = data().points, want = new Set(matchClasses(q));
    const xs = [], ys = [];
    let nr = 0, ng = 0, x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    if (want.size) for (let j = 0; j < P.cls.length; j++) {
      if (!want.has(P.cls[j])) continue;
      xs.push(P.x[j]); ys.push(P.y[j]);
      if (P.gen[j]) ng++; else nr++;
      x0 = Math.min(x0, P.x[j]); x1 = Math.max(x1, P.x[j]); y0 = Math.min(y0, P.y[j]); y1 = Math.max(y1, P.y[j]);
    }
    f.hl.data_source.data = { x: xs, y: ys };
    if (f.traj.pt) Site.drawTrajectories(name, [...want]);
    if (status) {
      status.textContent = !q.trim() ? "" : !want.size ? "no class matches" :
        (want.size === 1 ? className([...want][0]) : want.size + " classes") + ": " + nr + " real, " + ng + " generated" +
        (data().site.capped ? " marked, of " + [...want].reduce((a, c) => { const n = data().classCounts[String(c)] || [0, 0];
          return [a[0] + n[0], a[1] + n[1]]; }, [0, 0]).join(" real and ") + " generated in all" : "");
      status.dataset.count = xs.length;
    }
    if (zoom && xs.length) {
      const px = (x1 - x0) * 0.25 || 1, py = (y1 - y0) * 0.25 || 1;
      // Marked as a user zoom, or the data ranges recompute the full extent at their next update
      // (the first paint after #class= on load, or any data change) and undo it; reset clears the mark.
      [f.fig.x_range, f.fig.y_range].forEach(r => { if ("have_updated_interactively" in r) r.have_updated_interactively = true; });
      f.fig.x_range.setv({ start: x0 - px, end: x1 + px });
      f.fig.y_range.setv({ start: y0 - py, end: y1 + py });
    }
  };

  function showPage(name) {  // single-file form: one section per page
    const sections = document.querySelectorAll("[data-page-section]");
    if (!sections.length) return;
    let found = false;
    sections.forEach(s => { const on = s.dataset.pageSection === name; s.hidden = !on; found = found || on; });
    if (!found) sections.forEach((s, i) => { s.hidden = i !== 0; });
    document.querySelectorAll("[data-nav]").forEach(a => {
      const on = a.dataset.nav === name || (name.startsWith("class-") && a.dataset.nav === "classes");
      if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    window.dispatchEvent(new Event("resize"));  // let Bokeh lay out figures that were hidden
  }
  function applyHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const c = h.get("class");
    if (document.querySelector("[data-page-section]")) showPage(h.get("page") || (c !== null ? "map" : "index"));
    if (c !== null) {
      const input = document.querySelector('[data-search="map"]');
      if (input) { input.value = c; Site.search("map", c, true); }
    }
  }

  // ---- figure colours for light and dark mode ----
  function applyTheme() {
    const dark = window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches;
    const text = dark ? "#c9d1d9" : "#3b424c", line = dark ? "#5b6570" : "#9aa3ae", grid = dark ? "#323a44" : "#e1e5ea";
    const bg = dark ? "#14171c" : "#fbfbfc";
    const set = (m, k, v) => { if (m.properties && k in m.properties && m[k] !== null && m[k] !== v) m[k] = v; };
    for (const doc of docs()) for (const m of models(doc)) {
      ["axis_label_text_color", "major_label_text_color", "label_text_color", "title_text_color"].forEach(k => set(m, k, text));
      if (m.type === "Title" || (m.constructor && m.constructor.__name__ === "Title")) set(m, "text_color", text);
      ["axis_line_color", "major_tick_line_color"].forEach(k => set(m, k, line));
      set(m, "grid_line_color", grid);
      set(m, "inactive_fill_color", bg);
    }
  }

  // ---- tables ----
  function sortable(table) {
    table.querySelectorAll("thead th").forEach((th, col) => {
      th.addEventListener("click", () => {
        const asc = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(o => o.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        const num = th.dataset.sort === "num", body = table.tBodies[0];
        const key = tr => { const t = tr.children[col] ? tr.children[col].textContent.trim() : ""; return num ? parseFloat(t.replace(/,/g, "")) : t.toLowerCase(); };
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const ka = key(a), kb = key(b);
          if (num) { if (isNaN(ka)) return 1; if (isNaN(kb)) return -1; return asc ? ka - kb : kb - ka; }
          return asc ? ka.localeCompare(kb) : kb.localeCompare(ka);
        });
        rows.forEach(r => body.appendChild(r));
      });
    });
  }

  // ---- variants page: the class selector shows one class's seeds ("" = the classes the page opens on) ----
  Site.showVariantClass = function (value) {
    document.querySelectorAll("[data-variant-table]").forEach(t => {
      t.hidden = value === "" ? !t.hasAttribute("data-open") : t.dataset.variantTable !== String(value);
    });
  };
  document.addEventListener("change", e => {
    if (e.target.matches && e.target.matches("[data-variant-class]")) Site.showVariantClass(e.target.value);
  });

  // ---- start ----
  function whenFigures(cb) {
    const names = Array.from(document.querySelectorAll("[data-fig]")).map(e => e.dataset.fig)
      .filter(n => document.querySelector('[data-fig="' + n + '"] .bk-root, [data-fig="' + n + '"] [data-root-id]'));
    const t0 = performance.now();
    (function poll() {
      if (names.every(n => resolve(n)) || performance.now() - t0 > 30000) cb(); else setTimeout(poll, 10);
    })();
  }
  document.addEventListener("pointermove", e => { pointer = { x: e.clientX, y: e.clientY }; }, { capture: true, passive: true });
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("table.sortable").forEach(sortable);
    document.addEventListener("change", e => {
      const t = e.target;
      if (t.matches && t.matches("[data-layers]")) Site.setLayers(t.dataset.layers, t.value);
      if (t.matches && t.matches("[data-traj]")) Site.setTrajectory("map", t.dataset.traj, t.checked);
    });
    document.addEventListener("input", e => {
      const t = e.target;
      if (t.matches && t.matches("[data-search]")) Site.search(t.dataset.search, t.value, false);
    });
    document.addEventListener("keydown", e => {
      const t = e.target;
      if (e.key === "Enter" && t.matches && t.matches("[data-search]")) Site.search(t.dataset.search, t.value, true);
    });
    document.addEventListener("click", e => {  // thumbnails on the map page open their point's neighbours
      const t = e.target.closest && e.target.closest(".thumb[data-row]");
      if (t && document.querySelector('[data-nbr-for="map"]')) showNeighbours("map", Number(t.dataset.row));
    });
    window.addEventListener("hashchange", applyHash);
    if (document.querySelector("[data-page-section]")) applyHash();
    whenFigures(() => {
      applyTheme();
      if (window.matchMedia) matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
      applyHash();
      Site.ready = true;
      Site.readyAt = performance.now();
      document.body.dataset.ready = "1";
    });
  });
})();
