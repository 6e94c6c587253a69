/* dmd2report site behaviour: nearest-point hover, neighbour panel, selection (drawn on the map) and its grid
 * and CSV, filters on every per-point field, layer switches, opacity and colour-by, class and sample-id search,
 * the view in the address (#class=, #colour=, #view=, #point=, #sel=, #layers=, #on=, #filter=), detail on zoom
 * (tiles of every point loaded as scripts, density redrawn over the view), sortable tables and image grids, the compare page's class selector, dark-mode figure colours.
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
      hl: byName(name + ":hl"), focus: byName(name + ":focus"), lod: byName(name + ":lod"), index: null,
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
    const visible = f.pts.map(r => r.visible), st = view[f.name], pass = st ? st.pass : null;
    for (let cy = cy0; cy <= cy1; cy++) for (let cx = cx0; cx <= cx1; cx++) {
      const c = cy * G + cx;
      for (let k = ix.start[c]; k < ix.start[c + 1]; k++) {
        const j = ix.order[k];
        if (!visible[ix.rend[j]] || (pass && !pass[ix.rows[j]])) continue;
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
  function variantOf(row) { return data().variants[data().points.variant[row]]; }
  // A sample of another conditioning (uniform, zero, blend) carries its seed's class, not a class it was asked for.
  function classSet(v) { const st = data().style, S = st && st.variants[v]; return !!(S && S.classSet); }  // class-conditioned, any generator
  function conditioned(row) { const P = data().points; return !P.gen[row] || classSet(variantOf(row)); }
  function describe(row) {
    const P = data().points, gen = P.gen[row] === 1, v = variantOf(row), S = data().style;
    const dl = el("dl");
    const add = (k, val) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", val)); };
    add("id", P.id[row]);
    add("set", gen ? "generated · " + ((S.variants[v] && S.variants[v].words) || v) : "real");
    if (gen && P.generator && P.generator[row] >= 0) add("generator", S.generators[P.generator[row]][0]);
    if (gen && S.variants[v]) add("label", S.variants[v].label);
    if (conditioned(row)) {
      add("class", className(P.cls[row]));
      const c = data().classes[String(P.cls[row])];
      if (c) add("synset", c[0]);
    } else if (P.cls[row] >= 0) add("seed of", "a class-conditioned sample of " + className(P.cls[row]));
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
    const row = nearest(f, ev.x, ev.y, 14), tilePoint = row === null ? nearestDetail(f, ev.x, ev.y, 14) : null;
    if (tilePoint) showTileCard(tilePoint);
    else if (row === null) hideCard(); else showCard(row);
    Site.lastHover = { row: row, tile: tilePoint && tilePoint.T.ids[tilePoint.i], at: performance.now() };
  };
  Site.unhover = function () { hideCard(); };

  // ---- neighbour panel ----
  function fmt(d) { return d === null || d === undefined ? "–" : d.toFixed(3); }
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
        item.appendChild(el("span", "", "d " + fmt(dists[i])));
        grid.appendChild(item);
        return;
      }
      const item = el("div", "nbr");
      item.dataset.row = j;
      item.title = data().points.id[j] + " (" + (conditioned(j) ? className(data().points.cls[j]) : variantOf(j)) + ")";
      item.appendChild(thumb(data().points.thumb[j], 56));
      item.appendChild(el("span", "", dists ? "d " + fmt(dists[i]) : data().points.id[j]));
      item.addEventListener("click", () => onPick(j));
      // The id under each neighbour, in the panel (not only its tooltip), where it can be read and copied.
      const cell = el("div", "nbr-cell");
      cell.append(item);
      if (dists) cell.appendChild(el("code", "nbr-id", data().points.id[j]));
      grid.appendChild(cell);
    });
    return grid;
  }
  // A real point's coverage: the true number of class-conditioned samples whose k-NN ball holds it (all N),
  // those the site carries (nearest first, at most coveredBy.shown), and the radius it is tested with.
  function coverPart(row, pick) {
    const d = data(), C = d.coveredBy, k = d.nb.k, n = C.n[row], r = C.r[row];
    const listed = C.rows.slice(C.off[row], C.off[row + 1]);
    const gi = d.nb.gi.slice(row * k, row * k + k), gd = d.nb.gd.slice(row * k, row * k + k);
    const box = el("div", "cover");
    box.dataset.count = n;
    const p = el("p");
    p.appendChild(el("span", "badge " + (n ? "covered" : "uncovered"), n ? "covered" : "not covered"));
    const radius = r === null ? "" : " (r = " + fmt(r) + ")";
    if (n) {
      p.appendChild(document.createTextNode(" by " + n + (n === 1 ? " class-conditioned sample" : " class-conditioned samples") +
        " within this point's " + C.k + "-NN radius" + radius + (listed.length < n ? "; the nearest " + listed.length + " shown" : "") + "."));
      box.appendChild(p);
      // The covering samples are the nearest generated ones within r: their distances are those of the neighbour list.
      box.appendChild(nbrList(listed, listed.map((j, i) => gi[i] === j ? gd[i] : null), pick));
    } else {
      const near = gd[0];
      p.appendChild(document.createTextNode(": no class-conditioned sample lies within this point's " + C.k + "-NN radius" + radius +
        (near === null || near === undefined ? "." : "; the nearest is at d " + fmt(near) + " (below).")));
      box.appendChild(p);
    }
    return box;
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
    if (P.gen[row] === 0) parts.push(coverPart(row, pick));
    const layer = d.nb.layer ? " (" + d.nb.layer + ")" : "";
    parts.push(el("h3", "", k + " nearest real in activation space" + layer));
    parts.push(nbrList(d.nb.ri.slice(row * k, row * k + k), d.nb.rd.slice(row * k, row * k + k), pick, d.nb.rc.slice(row * k, row * k + k)));
    parts.push(el("h3", "", k + " nearest generated (" + (P.gen[row] ? variantOf(row) : "class") + "-conditioned set)" + layer));
    const near = nbrList(d.nb.gi.slice(row * k, row * k + k), d.nb.gd.slice(row * k, row * k + k), pick, d.nb.gc.slice(row * k, row * k + k));
    near.dataset.list = "generated";
    parts.push(near);
    if (d.site.capped) parts.push(el("p", "muted small", "Neighbours are the nearest of all " + d.site.total.toLocaleString("en") +
      " points; those without an image are not among the points this site carries."));
    panel.replaceChildren(...parts);
    panel.scrollTop = 0;
    panel.dataset.row = row;
    if (f && f.focus) {
      const nb = d.nb.ri.slice(row * k, row * k + k).concat(d.nb.gi.slice(row * k, row * k + k)).filter(j => j >= 0);
      const all = [row].concat(nb);
      f.focus.data_source.data = { x: all.map(j => P.x[j]), y: all.map(j => P.y[j]), size: all.map((j, i) => i ? 10 : 20) };
    }
    if (view[name]) { view[name].point = P.id[row]; writeHash(name); }
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
    const d = data(), P = d.points, lines = ["sample_id,set,variant,class_id,class_name,source,distance_to_real,trust"];
    // Past report.max_points only the drawn sample can be selected: the file says so on its first line
    // (a '#' comment: pandas.read_csv(..., comment="#") and most tools skip it).
    if (d.site.capped) lines.unshift("# selection among the " + d.site.drawn + " points drawn on the map, a class-balanced sample of all " +
      d.site.total + " points (report.max_points); points not drawn cannot be selected");
    for (const j of rows) {
      const c = d.classes[String(P.cls[j])], near = FIELDS.dist.value(j);
      lines.push([P.id[j], P.gen[j] ? "generated" : "real", d.variants[P.variant[j]], P.cls[j], c ? c[1] : "", P.src[j],
                  near === null ? "" : near, P.trust[j] === null ? "" : P.trust[j]].map(csvField).join(","));
    }
    return lines.join("\n") + "\n";
  };

  // ---- per-point fields: what the filters test, the grids sort by and the CSV carries ----
  function nbFirst(key, j) { const d = data(), v = d.nb[key][j * d.nb.k]; return v === undefined ? null : v; }
  const FIELDS = {
    dist: { words: "distance to nearest real", value: j => nbFirst("rd", j) },
    gdist: { words: "distance to nearest generated", value: j => nbFirst("gd", j) },
    trust: { words: "map trust", value: j => data().points.trust[j] },
    radius: { words: "k-NN radius (real)", value: j => data().points.gen[j] ? null : data().coveredBy.r[j] },
    covers: { words: "covering samples (real)", value: j => data().points.gen[j] ? null : data().coveredBy.n[j] },
  };
  Site.fields = FIELDS;
  function sortRows(rows, key, dir) {
    if (!key) return rows;
    const P = data().points, val = key === "id" ? (j => P.id[j]) : key === "class" ? (j => P.cls[j]) : FIELDS[key].value;
    const keyed = rows.map(j => [val(j), j]);
    keyed.sort((a, b) => {
      if (a[0] === null || a[0] === undefined) return 1;
      if (b[0] === null || b[0] === undefined) return -1;
      const c = typeof a[0] === "string" ? a[0].localeCompare(b[0]) : a[0] - b[0];
      return (c || a[1] - b[1]) * (c ? dir : 1);
    });
    return keyed.map(e => e[1]);
  }

  // ---- selection: drawn on the map (selected opaque, the rest faded), kept through colour and layer changes ----
  function placeOf(f) {  // each site row's point layer (-1: not drawn) and its position in that layer's source
    if (f.place) return f.place;
    const n = data().points.id.length, layer = new Int16Array(n).fill(-1), at = new Int32Array(n);
    f.pts.forEach((r, ri) => { const rows = r.data_source.data.row; for (let i = 0; i < rows.length; i++) { layer[rows[i]] = ri; at[rows[i]] = i; } });
    return f.place = { layer: layer, at: at };
  }
  function applySelection(name, rows) {
    const f = resolve(name);
    if (!f) return;
    const pl = placeOf(f), per = f.pts.map(() => []);
    for (const j of rows) if (j >= 0 && j < pl.layer.length && pl.layer[j] >= 0) per[pl.layer[j]].push(pl.at[j]);
    f.pts.forEach((r, i) => { r.data_source.selected.indices = per[i]; });
  }
  Site.select = applySelection;
  function restoreSelection(name) {  // a repaint keeps the selection the state holds
    const f = resolve(name), st = view[name];
    if (f && st && st.sel.length && selectedRows(f).length !== st.sel.length) applySelection(name, st.sel);
  }
  // Bokeh draws a layer with nothing selected as if nothing were selected: while another layer has a
  // selection, such a layer is muted (its muted glyph is the faded one, figures.FADED_ALPHA).
  function muteUnselected(f) {
    const any = f.pts.some(r => r.data_source.selected.indices.length > 0);
    f.pts.forEach(r => { const m = any && !r.data_source.selected.indices.length; if (r.muted !== m) r.muted = m; });
    detailLayers(f).all.forEach(r => { if (r.muted !== any) r.muted = any; });   // tile points are never selected
  }
  // A drawn point is shown when its layer is on and it passes the filters.
  function shown(name, f, j) {
    const st = view[name], pl = placeOf(f), li = pl.layer[j];
    return li >= 0 && f.pts[li].visible && (!st || st.pass === null || st.pass[j] === 1);
  }
  // What the side list holds: the selection (its shown points), else with a filter on every shown point.
  function listedRows(name) {
    const f = resolve(name), st = mapState(name);
    if (st.sel.length) return { what: "Selection", rows: st.sel.filter(j => shown(name, f, j)), of: st.sel.length };
    if (st.pass === null) return { what: "", rows: [], of: 0 };
    const rows = [];
    for (let j = 0; j < st.pass.length; j++) if (shown(name, f, j)) rows.push(j);
    return { what: "Filtered", rows: rows, of: rows.length };
  }
  Site.listedRows = function (name) { const l = listedRows(name), st = mapState(name); return sortRows(l.rows, st.sort[0], st.sort[1]); };
  function sortControl(name) {
    const st = mapState(name), box = el("label", "sort-by small", "sort by ");
    const sel = el("select");
    sel.dataset.sortFor = name;
    [["", "selection order"], ["id", "sample id"], ["class", "class"]].concat(Object.entries(FIELDS).map(([k, F]) => [k, F.words]))
      .forEach(([k, w]) => { const o = el("option", "", w); o.value = k; sel.appendChild(o); });
    sel.value = st.sort[0];
    const dir = el("button", "sort-dir", st.sort[1] > 0 ? "↑" : "↓");
    dir.type = "button"; dir.dataset.sortDir = name; dir.title = st.sort[1] > 0 ? "ascending" : "descending";
    box.append(sel, dir);
    return box;
  }
  function renderSelection(name) {
    const f = resolve(name), panel = document.querySelector('[data-sel-for="' + name + '"]'), st = mapState(name);
    if (!f) return;
    st.sel = selectedRows(f);
    muteUnselected(f);
    writeHash(name);
    if (!panel) return;
    const listed = listedRows(name), P = data().points, rows = sortRows(listed.rows, st.sort[0], st.sort[1]);
    const nReal = rows.filter(j => !P.gen[j]).length;
    const parts = [el("h2", "", (listed.what || "Selection") + ": " + rows.length + " (" + nReal + " real, " + (rows.length - nReal) + " generated)")];
    panel.dataset.count = rows.length;
    if (listed.what === "Selection" && rows.length < listed.of)
      parts.push(el("p", "muted small", "of " + listed.of + " selected; the filters or hidden layers leave out the rest"));
    if (rows.length) {
      const actions = el("div", "sel-actions");
      const dl = el("button", "", "Download ids (CSV)");
      dl.type = "button";
      dl.dataset.csv = name;
      dl.addEventListener("click", () => {
        const a = document.createElement("a");
        a.href = URL.createObjectURL(new Blob([Site.selectionCsv(rows)], { type: "text/csv" }));
        a.download = listed.what === "Filtered" ? "filtered.csv" : "selection.csv";
        document.body.appendChild(a); a.click(); a.remove();
      });
      actions.appendChild(dl);
      actions.appendChild(sortControl(name));
      if (rows.length > 120) actions.appendChild(el("span", "muted small", "showing the first 120"));
      parts.push(actions);
      parts.push(el("p", "muted small sel-legend", "outline: dashed = real, solid = generated"));
      const grid = el("div", "thumb-grid");
      rows.slice(0, 120).forEach(j => {
        const t = thumb(P.thumb[j], 48);
        t.classList.add(P.gen[j] ? "is-gen" : "is-real");
        t.dataset.set = P.gen[j] ? "generated" : "real";
        t.dataset.row = j;
        t.title = (P.gen[j] ? "generated · " + variantOf(j) : "real") + " · " + P.id[j] + " · " +
          (conditioned(j) ? className(P.cls[j]) : "seed of " + className(P.cls[j]));
        t.style.cursor = "pointer";
        t.addEventListener("click", () => showNeighbours(name, j));
        grid.appendChild(t);
      });
      parts.push(grid);
    } else parts.push(el("p", "muted", listed.what ? "No point passes." : "Nothing selected."));
    panel.replaceChildren(...parts);
  }

  // ---- filters: a range on every numeric field, categories (conditioning, covered, generator, class) ----
  function filterPanel(name) {
    const box = document.querySelector('[data-filter-for="' + name + '"] .filter-fields');
    if (!box || box.childNodes.length) return;
    const d = data(), P = d.points, n = P.id.length;
    Object.entries(FIELDS).forEach(([key, F]) => {
      let lo = Infinity, hi = -Infinity;
      for (let j = 0; j < n; j++) { const v = F.value(j); if (v !== null && v !== undefined) { if (v < lo) lo = v; if (v > hi) hi = v; } }
      if (lo > hi) return;
      const row = el("div", "filter-range");
      row.dataset.field = key;
      row.appendChild(el("span", "filter-name", F.words));
      [0, 1].forEach(end => {
        const inp = el("input");
        inp.type = "number"; inp.step = "any"; inp.dataset.range = key; inp.dataset.end = end;
        inp.placeholder = (end ? "≤ " + +hi.toPrecision(4) : "≥ " + +lo.toPrecision(4));
        inp.setAttribute("aria-label", F.words + (end ? " at most" : " at least"));
        row.appendChild(inp);
      });
      box.appendChild(row);
    });
    const cats = el("div", "filter-cats");
    const group = (label, key, options) => {
      const g = el("div", "filter-cat");
      g.dataset.cat = key;
      g.appendChild(el("span", "filter-name", label));
      options.forEach(([v, w]) => {
        const l = el("label", "check"), b = el("input");
        b.type = "checkbox"; b.checked = true; b.value = v; b.dataset.catOf = key;
        l.append(b, document.createTextNode(" " + w));
        g.appendChild(l);
      });
      cats.appendChild(g);
    };
    group("set", "variant", d.variants.map((v, i) => [String(i), v === "real" ? "real" : (d.style.variants[v] ? d.style.variants[v].words : v)]));
    group("covered (real)", "covered", [["1", "covered"], ["0", "not covered"]]);
    if (P.generator) group("generator", "generator", d.style.generators.map(([g], i) => [String(i), g]));
    const c = el("label", "filter-class", "class ");
    const ci = el("input");
    ci.type = "search"; ci.dataset.filterClass = name; ci.placeholder = "id, name or synset"; ci.setAttribute("list", "classlist-" + name);
    c.appendChild(ci);
    cats.appendChild(c);
    box.appendChild(cats);
  }
  function readFilter(name) {
    const panel = document.querySelector('[data-filter-for="' + name + '"]'), st = mapState(name), F = st.filter;
    if (!panel) return;
    F.ranges = {};
    panel.querySelectorAll("input[data-range]").forEach(i => {
      const v = i.value.trim() === "" ? null : Number(i.value);
      if (v === null || !isFinite(v)) return;
      (F.ranges[i.dataset.range] = F.ranges[i.dataset.range] || [null, null])[Number(i.dataset.end)] = v;
    });
    F.cats = {};
    panel.querySelectorAll("[data-cat]").forEach(g => {
      const boxes = Array.from(g.querySelectorAll("input[data-cat-of]"));
      if (boxes.some(b => !b.checked)) F.cats[g.dataset.cat] = new Set(boxes.filter(b => b.checked).map(b => Number(b.value)));
    });
    const ci = panel.querySelector("[data-filter-class]");
    F.cls = ci ? ci.value.trim() : "";
  }
  // The filters as a test of point j of columns P (the site's points or a tile's) whose fields value(key, j) gives;
  // null when no filter is set.
  function filterTest(name) {
    const F = mapState(name).filter, ranges = Object.entries(F.ranges), cats = F.cats, cls = F.cls ? new Set(matchClasses(F.cls)) : null;
    if (!ranges.length && !Object.keys(cats).length && !cls) return null;
    return (P, j, value) => {
      let ok = !cls || cls.has(P.cls[j]);
      if (ok && cats.variant) ok = cats.variant.has(P.variant[j]);
      if (ok && cats.covered) ok = !P.gen[j] && cats.covered.has(P.covered[j]);   // a real point's property
      if (ok && cats.generator) ok = !!P.gen[j] && cats.generator.has(P.generator[j]);
      for (let k = 0; ok && k < ranges.length; k++) {
        const v = value(ranges[k][0], j), r = ranges[k][1];
        ok = v !== null && v !== undefined && (r[0] === null || v >= r[0]) && (r[1] === null || v <= r[1]);
      }
      return ok;
    };
  }
  function applyFilter(name) {
    const f = resolve(name), st = mapState(name), d = data(), P = d.points, n = P.id.length;
    if (!f) return;
    const test = filterTest(name);
    if (!test) st.pass = null;
    else {
      const pass = new Uint8Array(n), value = (key, j) => FIELDS[key].value(j);
      for (let j = 0; j < n; j++) pass[j] = test(P, j, value) ? 1 : 0;
      st.pass = pass;
    }
    setFilters(name);
    filterStatus(name);
    Site.selected(name);
    scheduleDetail(name);
    writeHash(name);
  }
  // What each point layer draws: the points passing the filters (the detail layers hold only those). While a person
  // moves a map whose full paint is slow, a sample of them is drawn instead (see "while the view moves" below).
  function setFilters(name) {
    const f = resolve(name), st = mapState(name);
    for (const r of f.pts) {
      const rows = r.data_source.data.row;
      r.view.filter.booleans = st.pass === null ? null : Array.from(rows, j => st.pass[j] === 1);
    }
    if (st.lod) drawSample(name);
  }
  function filterStatus(name) {  // the number of drawn points the map shows (layer on, filters passed)
    const f = resolve(name), st = mapState(name), status = document.querySelector('[data-filter-status="' + name + '"]');
    if (!f || !status) return;
    let m = 0;
    f.pts.forEach(r => { if (r.visible) for (const j of r.data_source.data.row) if (st.pass === null || st.pass[j]) m++; });
    status.dataset.count = m;
    status.textContent = st.pass === null ? "" : m + " of " + data().site.drawn + " drawn points shown";
  }
  Site.applyFilter = function (name) { readFilter(name); applyFilter(name); };
  Site.clearFilter = function (name) {
    const panel = document.querySelector('[data-filter-for="' + name + '"]');
    if (panel) {
      panel.querySelectorAll("input[data-range], input[data-filter-class]").forEach(i => { i.value = ""; });
      panel.querySelectorAll("input[data-cat-of]").forEach(b => { b.checked = true; });
    }
    Site.applyFilter(name);
  };

  // ---- the map's view: layers, opacity, colour-by, key; kept in the address ----
  // Per figure: what the page shows, written to the hash (so a link reproduces it) and read back from it.
  const view = {};
  function mapState(name) {
    return view[name] || (view[name] = { layers: "both", off: new Set(), colour: null, alpha: { real: 0.6, generated: 0.25 },
                                         search: "", withVariants: false, point: null, range: null, sel: [],
                                         filter: { ranges: {}, cats: {}, cls: "" }, pass: null, sort: ["", 1] });
  }
  function dark() { return !!(window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches); }
  function hex(c) { return [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)); }
  function ramp(t) {  // t in [0, 1] along the style's ramp (good to bad)
    const R = data().style.ramp, x = Math.min(1, Math.max(0, t)) * (R.length - 1), i = Math.min(R.length - 2, Math.floor(x));
    const a = hex(R[i]), b = hex(R[i + 1]), u = x - i;
    return "#" + a.map((v, c) => Math.round(v + (b[c] - v) * u).toString(16).padStart(2, "0")).join("");
  }
  function classStyle(c) {  // [colour, ringed] of a class; classes past the own styles share hashed colours
    const S = data().style, own = S.classes[String(c)];
    return own ? own : [S.rest[String(c)] || S.real, false];
  }
  // One point's [fill colour, fill alpha, line colour, line width] under a colour-by choice.
  const OUTLINE = 1.2;  // generated points are outlines with a light fill: the real points show through
  function pointStyle(mode, row, alphaGen, T) {  // T: a tile's columns (row: its point), else the site's points
    const d = data(), S = d.style, P = T || d.points, v = d.variants[P.variant[row]], vc = S.variants[v] ? S.variants[v].colour : S.real;
    if (!P.gen[row]) {
      if (mode === "trust" && P.trust[row] !== null) return [ramp(1 - P.trust[row])];
      if (mode === "covered") return [P.covered[row] ? S.covered[0] : S.uncovered[0]];
      if (mode === "coverdiff" && P.coverDiff) return [S.coverDiff[P.coverDiff[row]][1]];
      return [S.real];
    }
    if (mode === "generator" && P.generator) { const c = S.generators[P.generator[row]][1]; return [c, alphaGen, c, OUTLINE]; }
    if (mode === "coverdiff") return [S.real, Math.min(alphaGen, 0.2), S.real, 0.5];
    if (mode === "class") {
      if (!classSet(v) || P.cls[row] < 0) return [vc, 0, vc, 1.4];  // not asked for a class: hollow, variant colour
      const [c, ring] = classStyle(P.cls[row]);
      return ring ? [c, alphaGen, dark() ? "#f0f0f0" : S.ring, 1.6] : [c, alphaGen, c, OUTLINE];
    }
    if (mode === "trust") { const c = P.trust[row] === null ? S.real : ramp(1 - P.trust[row]); return [c, alphaGen, c, OUTLINE]; }
    if (mode === "covered") return [S.real, Math.min(alphaGen, 0.2), S.real, 0.5];
    if (mode === "distance") {
      const k = d.nb.k, dist = T ? T.dist[row] : d.nb.rd[row * k], lo = S.dist[0], hi = S.dist[1];
      const c = dist === null ? S.real : ramp(hi > lo ? (dist - lo) / (hi - lo) : 0);
      return [c, alphaGen, c, OUTLINE];
    }
    return [vc, alphaGen, vc, OUTLINE];  // variant
  }
  function paint(name) {
    const f = resolve(name), st = mapState(name);
    if (!f) return;
    const mode = st.colour;
    for (const r of f.real) {
      const src = r.data_source, rows = src.data.row;
      src.data = Object.assign({}, src.data, { color: Array.from(rows, j => pointStyle(mode, j)[0]) });
      r.glyph.fill_alpha = st.alpha.real;
      // Larger where the real points carry the colour (every glyph of the layer: selected and faded too).
      const size = REAL_COLOURED[mode] ? 6 : 5;
      [r.glyph, r.selection_glyph, r.nonselection_glyph, r.muted_glyph].forEach(g => { if (g && g.size !== undefined) g.size = size; });
    }
    orderLayers(f, !!REAL_COLOURED[mode]);
    for (const r of f.gens) {
      const src = r.data_source, rows = src.data.row, n = rows.length;
      const color = new Array(n), fa = new Float32Array(n), line = new Array(n), lw = new Float32Array(n);
      for (let i = 0; i < n; i++) { const s = pointStyle(mode, rows[i], st.alpha.generated); color[i] = s[0]; fa[i] = s[1]; line[i] = s[2]; lw[i] = s[3]; }
      src.data = Object.assign({}, src.data, { color: color, fa: fa, line: line, lw: lw });
    }
    showLayers(name);
    drawKey(name);
    restoreSelection(name);
  }
  // Colourings that colour the real points: the real layer is drawn above the (faint) generated layers.
  const REAL_COLOURED = { trust: 1, covered: 1, coverdiff: 1 };
  function orderLayers(f, realOnTop) {
    const rs = f.fig.renderers, real = new Set(f.real), gens = new Set(f.gens);
    const rest = rs.filter(r => !real.has(r));
    let at = -1;
    rest.forEach((r, i) => { if (gens.has(r)) at = realOnTop ? i + 1 : (at < 0 ? i : at); });
    if (at < 0) return;
    const next = rest.slice(0, at).concat(f.real, rest.slice(at));
    if (next.some((r, i) => r !== rs[i])) f.fig.renderers = next;
  }
  Site.layerOrder = function (name) { const f = resolve(name); return f ? f.fig.renderers.map(r => r.name) : []; };
  // Which layers are on: the real/generated switch, each variant's box in the key, and the density images that
  // go with them (every point's density beneath; past the cap the generated ones match the colour-by).
  function showLayers(name) {
    const f = resolve(name), st = mapState(name);
    if (!f) return;
    const realOn = st.layers !== "generated", genOn = i => st.layers !== "real" && !st.off.has(i);
    f.real.forEach(r => { r.visible = realOn; });
    f.gens.forEach(r => { r.visible = genOn(Number(r.name.split(":").pop())); });
    document.querySelectorAll('[data-key="' + name + '"] input[data-variant-layer]').forEach(b => {
      b.checked = !st.off.has(Number(b.dataset.variantLayer)); });
    if (st.pass !== null || st.sel.length) { filterStatus(name); Site.selected(name); }  // the list follows the layers shown
    for (const m of byPrefix(name + ":density:")) {
      const [, , kind, i] = m.name.split(":");
      if (kind === "0") { m.visible = realOn; m.global_alpha = Math.min(1, 2 * st.alpha.real); continue; }
      const cls = st.colour === "class" && byName(name + ":density:cls:" + i) !== null;
      m.visible = genOn(Number(i)) && (kind === "cls" ? cls : st.colour === "variant" || (st.colour === "class" && !cls));
      m.global_alpha = Math.min(1, 1.4 * st.alpha.generated);
    }
    scheduleDetail(name);
  }
  const HOLLOW = { "●": "○", "■": "□", "▲": "△", "◆": "◇", "▼": "▽", "★": "☆" };
  function swatch(colour, symbol, hollow, ring) {
    const s = el("span", "sw" + (ring ? " ring" : ""), hollow ? HOLLOW[symbol] || symbol : symbol || "●");
    s.setAttribute("aria-hidden", "true");
    s.style.color = colour;
    return s;
  }
  function keyRow(parts, attrs) {
    const row = el("div", "key-row");
    parts.forEach(p => row.appendChild(typeof p === "string" ? document.createTextNode(p) : p));
    Object.assign(row.dataset, attrs || {});
    return row;
  }
  function gradient(lo, hi, what) {
    const bar = el("div", "ramp");
    bar.style.background = "linear-gradient(to right, " + data().style.ramp.join(", ") + ")";
    return [bar, keyRow([el("span", "", lo), el("span", "grow", ""), el("span", "", hi)]), el("p", "muted small", what)];
  }
  function drawKey(name) {
    const box = document.querySelector('[data-key="' + name + '"]'), st = mapState(name);
    const f = resolve(name);
    if (!box || !f) return;
    const d = data(), S = d.style, mode = st.colour, parts = [];
    // Layers: real, then one box per conditioning variant (its marker shape on the map).
    const realRow = keyRow([swatch(mode === "trust" ? ramp(0) : S.real, "●"), "real (" + d.site.real.toLocaleString("en") + ")"]);
    parts.push(realRow);
    f.gens.forEach(r => {
      const i = Number(r.name.split(":").pop()), v = d.variants[d.points.variant[r.data_source.data.row[0]]];
      const vs = S.variants[v] || { colour: S.real, marker: "●", words: v, n: 0 };
      const box = el("input");
      box.type = "checkbox"; box.checked = !st.off.has(i); box.dataset.variantLayer = i;
      box.setAttribute("aria-label", "show " + v);
      const label = el("label", "key-row");
      label.append(box, swatch(mode === "variant" || (mode === "class" && !classSet(v)) ? vs.colour : S.real, vs.marker,
                              mode === "class" && !classSet(v)), document.createTextNode(vs.words + " (" + vs.n.toLocaleString("en") + ")"));
      label.dataset.variant = v;
      label.title = vs.label;
      parts.push(label);
    });
    parts.push(el("h3", "", "colour: " + (document.querySelector('[data-colour="' + name + '"] option[value="' + mode + '"]') || { textContent: mode }).textContent));
    if (mode === "class") {
      Object.keys(S.classes).forEach(c => {
        const [col, ring] = S.classes[c];
        parts.push(keyRow([swatch(col, "●", false, ring), className(Number(c))], { cls: c }));
      });
      const nRest = Object.keys(S.rest).length;
      if (nRest) parts.push(keyRow([swatch(S.real, "●"), nRest + " other classes (hashed colours; hover names them)"]));
      parts.push(el("p", "muted small", "Class-conditioned samples by their class; samples of the other conditionings " +
        "were not asked for a class: hollow, in their variant's colour. Real points grey."));
    } else if (mode === "variant") {
      parts.push(el("p", "muted small", "Generated samples by the label they were generated with; real points grey."));
    } else if (mode === "trust") {
      parts.push(...gradient("1 (kept)", "0 (lost)", S.trust));
    } else if (mode === "covered") {
      parts.push(keyRow([swatch(S.covered[0], "●"), "covered (" + S.covered[1].toLocaleString("en") + " real)"], { covered: "1" }));
      parts.push(keyRow([swatch(S.uncovered[0], "●"), "not covered (" + S.uncovered[1].toLocaleString("en") + " real)"], { covered: "0" }));
      parts.push(el("p", "muted small", "A real point is covered when a class-conditioned sample lies within its " + d.coveredBy.k +
        "-NN radius (coverage). Generated points faint."));
    } else if (mode === "generator" && S.generators) {
      S.generators.forEach(([g, c, n]) => parts.push(keyRow([swatch(c, "●"), g + " (" + n.toLocaleString("en") + ")"], { generator: g })));
      parts.push(el("p", "muted small", "Generated samples by the generator that made them, every one re-encoded by the " +
        "reference encoder (" + S.generators[0][0] + "); real points grey."));
    } else if (mode === "coverdiff" && S.coverDiff) {
      S.coverDiff.forEach(([w, c, n], i) => parts.push(keyRow([swatch(c, "●"), w + " (" + n.toLocaleString("en") + " real)"], { coverDiff: String(i) })));
      parts.push(el("p", "muted small", "Real points by which class-conditioned set covers them: a sample within the point's " +
        d.coveredBy.k + "-NN radius. Generated points faint."));
    } else if (mode === "distance") {
      parts.push(...gradient(S.dist[0].toFixed(2), S.dist[1].toFixed(2) + "+",
        "Distance from a generated sample to its nearest real sample in activation space (5th to 95th percentile of all). Real points grey."));
    }
    box.replaceChildren(...parts);
  }
  Site.setColour = function (name, mode) {
    const st = mapState(name), sel = document.querySelector('[data-colour="' + name + '"]');
    const compared = data().style && data().style.generators ? { generator: 1, coverdiff: 1 } : {};
    if (!data().style || !(mode in Object.assign({ class: 1, variant: 1, trust: 1, covered: 1, distance: 1 }, compared))) return;
    st.colour = mode;
    if (sel) sel.value = mode;
    paint(name);
    writeHash(name);
  };
  Site.setLayers = function (name, which) {
    const st = mapState(name);
    st.layers = which;
    if (which === "generated") st.off.clear();  // every generated set, the other conditionings too
    document.querySelectorAll('input[data-layers="' + name + '"]').forEach(i => { i.checked = i.value === which; });
    showLayers(name);
    writeHash(name);   // now, not at the next selection repaint: a link copied right after holds the switch
  };
  Site.setVariantLayer = function (name, i, on) {
    const st = mapState(name);
    if (on) st.off.delete(i); else st.off.add(i);
    showLayers(name);
    writeHash(name);
  };
  Site.setOpacity = function (name, layer, v) {
    mapState(name).alpha[layer] = v;
    paint(name);
  };
  Site.setLabels = function (name, on) { const r = byName(name + ":labels"); if (r) r.visible = on; };

  // ---- class and sample-id search ----
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
  let idIndex = null;
  function rowOfId(id) {  // a carried sample's site row by its sample id, or -1
    if (!idIndex) { idIndex = new Map(); data().points.id.forEach((s, j) => idIndex.set(s, j)); }
    const j = idIndex.get(id);
    return j === undefined ? -1 : j;
  }
  Site.rowOfId = rowOfId;
  function zoomTo(f, x0, x1, y0, y1) {
    // Marked as a user zoom, or the data ranges recompute the full extent at their next update
    // (the first paint after #class= on load, or any data change) and undo it; reset clears the mark.
    [f.fig.x_range, f.fig.y_range].forEach(r => { if ("have_updated_interactively" in r) r.have_updated_interactively = true; });
    f.fig.x_range.setv({ start: x0, end: x1 });
    f.fig.y_range.setv({ start: y0, end: y1 });
  }
  Site.zoomTo = function (name, x0, x1, y0, y1) { const f = resolve(name); if (f) zoomTo(f, x0, x1, y0, y1); };
  Site.search = function (name, q, zoom) {
    const f = resolve(name), status = document.querySelector('[data-search-status="' + name + '"]');
    if (!f || !f.hl) return;
    const d = data(), P = d.points, st = mapState(name), want = new Set(matchClasses(q));
    st.search = q.trim();
    const xs = [], ys = [];
    let nr = 0, ng = 0, x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    const one = !want.size && q.trim() ? rowOfId(q.trim()) : -1;
    const mark = j => {
      xs.push(P.x[j]); ys.push(P.y[j]);
      if (P.gen[j]) ng++; else nr++;
      x0 = Math.min(x0, P.x[j]); x1 = Math.max(x1, P.x[j]); y0 = Math.min(y0, P.y[j]); y1 = Math.max(y1, P.y[j]);
    };
    // A class marks its real points and the samples conditioned on it; the other conditionings' samples
    // (made from its seeds) only when asked ("with other conditionings").
    if (want.size) for (let j = 0; j < P.cls.length; j++) if (want.has(P.cls[j]) && (st.withVariants || conditioned(j))) mark(j);
    if (one >= 0) mark(one);
    f.hl.data_source.data = { x: xs, y: ys };
    if (f.traj.pt) Site.drawTrajectories(name, [...want]);
    if (status) {
      const inAll = [...want].reduce((a, c) => { const n = d.classCounts[String(c)] || [0, 0, 0];
        return [a[0] + n[0], a[1] + n[1] + (st.withVariants ? n[2] : 0)]; }, [0, 0]);
      status.textContent = !q.trim() ? "" : one >= 0 ? "sample " + P.id[one] + " (" + (P.gen[one] ? "generated · " + variantOf(one) : "real") + ")" :
        !want.size ? "no class or sample id matches" + (d.site.capped ? " (ids: only the points this site carries)" : "") :
        (want.size === 1 ? className([...want][0]) : want.size + " classes") + ": " + nr + " real, " + ng + " generated" +
        (d.site.capped ? " marked, of " + inAll.join(" real and ") + " generated in all" : "");
      status.dataset.count = xs.length;
    }
    if (zoom && xs.length) {
      const X = f.fig.x_range, Y = f.fig.y_range;
      const px = one >= 0 ? Math.abs(X.end - X.start) * 0.08 : (x1 - x0) * 0.25 || 1;
      const py = one >= 0 ? Math.abs(Y.end - Y.start) * 0.08 : (y1 - y0) * 0.25 || 1;
      zoomTo(f, x0 - px, x1 + px, y0 - py, y1 + py);
    }
    if (one >= 0) showNeighbours(name, one);
    writeHash(name);
  };

  // ---- the view in the address: #class= (search), colour=, view=x0,x1,y0,y1, point=sample id, with=variants ----
  let applying = false;
  function writeHash(name) {
    const st = view[name], f = resolve(name);
    if (applying || !st || !f || !Site.ready) return;
    const h = new URLSearchParams(location.hash.slice(1)), put = (k, v) => { if (v) h.set(k, v); else h.delete(k); };
    put("class", st.search);
    put("with", st.withVariants ? "variants" : "");
    put("colour", st.colour !== document.querySelector('[data-fig="' + name + '"]').dataset.colorBy ? st.colour : "");
    put("view", st.range ? st.range.map(v => +v.toPrecision(6)).join(",") : "");
    put("point", st.point);
    put("layers", st.layers !== "both" ? st.layers : "");
    put("filter", filterHash(st.filter));
    const on = f.gens.map(r => Number(r.name.split(":").pop())).filter(i => !st.off.has(i)).sort((a, b) => a - b).join(".");
    put("on", st.layers !== "generated" && on !== st.defaultOn ? on || "none" : "");
    put("sel", st.sel.map(j => j.toString(36)).join("."));
    const hash = h.toString().replace(/\+/g, "%20");
    if (hash !== location.hash.slice(1)) history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }
  Site.rangesChanged = function (name) {  // a pan, zoom or reset (the Reset event follows a reset and clears it)
    const f = resolve(name), st = mapState(name);
    if (!f || applying) return;
    const X = f.fig.x_range, Y = f.fig.y_range;
    st.range = [X.start, X.end, Y.start, Y.end];
    writeHash(name);
    moved(name);
  };
  // ---- while the view moves. Past a budget, a pan or zoom frame draws a fixed sample of the map's points (the same
  // ones each time, by row), as BokehJS's own level of detail does on a canvas (it leaves WebGL layers whole). The
  // sample's size follows the paints' times (batchWebglCopies measures each): the first from the last full paint,
  // then scaled by each sampled paint's time against LOD.budgetMs, down at once and up by steps (a paint's cost is
  // the points sent, those in view, the density images and the copy, in proportions that change with the zoom).
  // Where WebGL is hardware a full paint takes a few ms and nothing is left out; in software WebGL frames stay near
  // the budget at any site size and zoom. Once the view has been still for the figure's lod_timeout (BokehJS's
  // 500 ms: a hesitation mid-gesture is not a stop), every point is back and the view's tiles and density images
  // are redrawn, in one task: one full paint (the figures' lod_interval is 0, so BokehJS adds no repaints of its
  // own). Site.lod.budgetMs may be changed (tests). ----
  const LOD = Site.lod = { budgetMs: 20, floor: 0.05, moving: {}, timer: {}, fullMs: {}, want: {}, input: {}, painted: {} };
  function lodKeeps(j, frac) { return (Math.imul(j + 1, 2654435761) >>> 0) / 4294967296 < frac; }
  // The sample is drawn by the map's one "lod" layer, painted in place of the point and detail layers (which are
  // skipped, not hidden: what a person sees as on stays on): BokehJS's WebGL markers send every point of a layer
  // through the GPU and hide those filtered out, so a 5% filter on a 20,000-point layer costs nearly its full paint.
  // Each sampled point carries its layer's style as drawn now (the selection, selected or faded, and muting too), in
  // the layers' painting order. Drawn points are sampled by row, a tile's points by their place in the layer.
  function specAt(g, key, d, k) {   // a glyph property's value for point k: a column, a value, or a value set by JS
    const s = g[key];
    if (s !== null && typeof s === "object" && !Array.isArray(s)) return "field" in s ? d[s.field][k] : s.value;
    return s;
  }
  function lodColumns(f) {   // the lod layer's columns (figures.LOD_COLUMNS), empty
    return Object.fromEntries(Object.keys(f.lod.data_source.data).map(k => [k, []]));
  }
  function drawSample(name) {
    const f = resolve(name), st = mapState(name), pv = Bokeh.index[f.fig.id], frac = st.lod;
    const C = lodColumns(f);
    const layers = new Set(f.pts.concat(data().tiles ? detailLayers(f).all : []));
    for (const r of f.fig.renderers) {
      if (!layers.has(r) || !r.visible) continue;
      const src = r.data_source, d = src.data, rows = d.row, n = src.get_length() || 0;
      const sel = r.muted || !src.selected.indices.length ? null : new Set(src.selected.indices);
      const own = g => g && typeof g === "object" ? g : r.glyph;   // "auto": the layer's own glyph
      const base = own(r.muted ? r.muted_glyph : r.glyph), on = own(r.selection_glyph), off = own(r.nonselection_glyph);
      for (let k = 0; k < n; k++) {
        const j = rows ? rows[k] : -1;
        if (rows ? (st.pass !== null && st.pass[j] !== 1) || !lodKeeps(j, frac) : !lodKeeps(k, frac)) continue;
        const g = sel === null ? base : sel.has(k) ? on : off;
        const line = specAt(g, "line_color", d, k);
        C.x.push(d.x[k]); C.y.push(d.y[k]); C.row.push(j);
        C.marker.push(specAt(g, "marker", d, k)); C.size.push(specAt(g, "size", d, k));
        C.color.push(specAt(g, "fill_color", d, k) || "#000000"); C.fa.push(specAt(g, "fill_alpha", d, k));
        C.line.push(line || "#000000"); C.la.push(line ? specAt(g, "line_alpha", d, k) : 0);
        C.lw.push(line ? specAt(g, "line_width", d, k) : 0);
      }
    }
    f.lod.data_source.data = C;
    pv.dmd2Skip = layers;
  }
  function drawWhole(name) {
    const f = resolve(name), pv = Bokeh.index[f.fig.id];
    pv.dmd2Skip = null;
    f.lod.data_source.data = lodColumns(f);
  }
  function paintTimed(name, ms) {   // a paint of figure `name`'s glyphs: the sample the next frame should draw
    const st = name && view[name];
    if (!st) return;
    if (!st.lod) LOD.fullMs[name] = ms;
    else LOD.want[name] = Math.max(LOD.floor, Math.min(1, st.lod * 1.25, st.lod * LOD.budgetMs / ms));
  }
  function moved(name) {   // every range change: a frame of a pan or zoom, a reset, a view from the address
    const f = resolve(name), st = mapState(name);
    if (!f) return;
    LOD.moving[name] = true;
    // Only a person's pan or zoom (a wheel or drag on the figure just now) draws a sample: a view set by the page (the
    // ranges fitted to the data, a search, a link, a reset) is one frame, drawn whole.
    const byHand = performance.now() - (LOD.input[name] || -Infinity) < 250;
    const want = !f.lod || !Bokeh.index[f.fig.id].dmd2Batched ? 1   // (another BokehJS: its own paint, whole)
      : st.lod ? LOD.want[name] : byHand ? LOD.budgetMs / LOD.fullMs[name] : 1;
    if (want < 1 ? !st.lod || Math.abs(want - st.lod) > 0.25 * st.lod : st.lod && want >= 1) {   // changed by a quarter
      st.lod = want < 1 ? Math.max(LOD.floor, want) : null;
      if (st.lod) drawSample(name); else drawWhole(name);
    }
    clearTimeout(LOD.timer[name]);
    LOD.timer[name] = setTimeout(() => settled(name), f.fig.lod_timeout || 500);
  }
  function settled(name) {
    const st = mapState(name);
    LOD.moving[name] = false;
    if (st.lod) { st.lod = null; drawWhole(name); }
    if (data().tiles) { clearTimeout(detailTimer[name]); refreshDetail(name); }
  }
  function followMoves(name) {   // every range change (RangesUpdate comes after a pan ends: too late for its frames)
    const f = resolve(name), move = () => moved(name), box = document.querySelector('[data-fig="' + name + '"]');
    for (const r of [f.fig.x_range, f.fig.y_range]) for (const k of ["start", "end"])
      if (r.properties && r.properties[k]) r.properties[k].change.connect(move);
    const input = e => { if (e.type !== "pointermove" || e.buttons) LOD.input[name] = performance.now(); };
    if (box) for (const t of ["wheel", "pointermove", "touchmove"]) box.addEventListener(t, input, { capture: true, passive: true });
  }
  Site.viewReset = function (name) { mapState(name).range = null; writeHash(name); };
  Site.reset = function (name) {
    const f = resolve(name), st = mapState(name);
    if (!f) return;
    const input = document.querySelector('[data-search="' + name + '"]');
    if (input) input.value = "";
    st.point = null;
    Site.search(name, "", false);
    if (f.focus) f.focus.data_source.data = { x: [], y: [], size: [] };
    const panel = document.querySelector('[data-nbr-for="' + name + '"]');
    if (panel && panel._intro) { panel.replaceChildren(...panel._intro.map(n => n.cloneNode(true))); delete panel.dataset.row; }
    for (const r of f.pts) r.data_source.selected.indices = [];
    Bokeh.index[f.fig.id].reset();  // ranges to the data, as the toolbar's reset (its Reset event clears st.range)
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
    if (document.querySelector("[data-page-section]")) showPage(h.get("page") || (c !== null || h.get("point") !== null ? "map" : "index"));
    const f = resolve("map");
    if (!f || !data().style) return;
    const st = mapState("map"), input = document.querySelector('[data-search="map"]');
    applying = true;
    try {
      const colour = h.get("colour") || document.querySelector('[data-fig="map"]').dataset.colorBy;
      if (colour !== st.colour) Site.setColour("map", colour);
      st.withVariants = h.get("with") === "variants";
      const box = document.querySelector('[data-search-variants="map"]');
      if (box) box.checked = st.withVariants;
      const range = (h.get("view") || "").split(",").map(Number);
      const hasRange = range.length === 4 && range.every(isFinite) && range[1] > range[0] && range[3] > range[2];
      if (c !== null || st.search) { if (input) input.value = c || ""; Site.search("map", c || "", !hasRange); }
      if (hasRange) { zoomTo(f, ...range); st.range = range; }
      const layers = h.get("layers");
      Site.setLayers("map", layers === "real" || layers === "generated" ? layers : "both");
      const on = h.get("on");
      if (on !== null && st.layers !== "generated") {
        const want = new Set(on.split(".").map(Number));
        st.off = new Set(f.gens.map(r => Number(r.name.split(":").pop())).filter(i => !want.has(i)));
        showLayers("map");
      }
      const point = h.get("point"), row = point ? rowOfId(point) : -1;
      if (row >= 0) showNeighbours("map", row);
      st.point = row >= 0 ? point : null;
      if (row >= 0 && !hasRange && c === null) {  // a link to a point (a gallery's): the map around it
        const X = f.fig.x_range, Y = f.fig.y_range, P = data().points;
        const px = Math.abs(X.end - X.start) * 0.12, py = Math.abs(Y.end - Y.start) * 0.12;
        zoomTo(f, P.x[row] - px, P.x[row] + px, P.y[row] - py, P.y[row] + py);
      }
      restoreFilter("map", h.get("filter") || "");
      const sel = (h.get("sel") || "").split(".").filter(Boolean).map(v => parseInt(v, 36)).filter(isFinite);
      st.sel = sel;
      applySelection("map", sel);
    } finally { applying = false; }
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
    const labels = byName("map:labels");  // class labels: page-coloured boxes, text in the page's colour
    if (labels) { labels.glyph.text_color = dark ? "#e3e6ea" : "#1d2129"; labels.glyph.background_fill_color = dark ? "#1b1f25" : "#ffffff"; }
    if (view.map && view.map.colour) paint("map");  // ring outlines follow the page colour
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

  // ---- static image grids (class pages): sortable by any per-point field ----
  function sortableGrid(grid) {
    const items = Array.from(grid.querySelectorAll(".thumb[data-row]"));
    if (items.length < 2) return;
    const box = el("label", "sort-by small", "sort by "), sel = el("select"), dir = el("button", "sort-dir", "↑");
    sel.dataset.gridSort = "";
    [["", "as listed"], ["id", "sample id"]].concat(Object.entries(FIELDS).map(([k, F]) => [k, F.words]))
      .forEach(([k, w]) => { const o = el("option", "", w); o.value = k; sel.appendChild(o); });
    dir.type = "button";
    let sign = 1;
    const order = () => {
      const rows = sortRows(items.map(t => Number(t.dataset.row)), sel.value, sign), at = new Map(items.map(t => [Number(t.dataset.row), t]));
      rows.forEach(j => grid.appendChild(at.get(j)));
    };
    sel.addEventListener("change", order);
    dir.addEventListener("click", () => { sign = -sign; dir.textContent = sign > 0 ? "↑" : "↓"; order(); });
    box.append(sel, dir);
    grid.parentNode.insertBefore(box, grid);
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
  // ---- compare page: the class selector shows one class's same-seed grid ("" = the classes the page opens on) ----
  Site.showCompareClass = function (value) {
    document.querySelectorAll("[data-seed-table]").forEach(t => {
      t.hidden = value === "" ? !t.hasAttribute("data-open") : t.dataset.seedTable !== String(value);
    });
  };

  // ---- filters in the address: filter=dist:0.5:1.2~variant=0.2~class=dog (empty bound: none) ----
  function filterHash(F) {
    const parts = Object.entries(F.ranges).map(([k, r]) => k + ":" + r.map(v => v === null ? "" : +v.toPrecision(6)).join(":"));
    Object.entries(F.cats).forEach(([k, on]) => parts.push(k + "=" + [...on].sort((a, b) => a - b).join(".")));
    if (F.cls) parts.push("class=" + F.cls.replace(/~/g, " "));
    return parts.join("~");
  }
  function restoreFilter(name, text) {
    const st = mapState(name), panel = document.querySelector('[data-filter-for="' + name + '"]');
    if (!panel || text === filterHash(st.filter)) return;
    panel.querySelectorAll("input[data-range], input[data-filter-class]").forEach(i => { i.value = ""; });
    panel.querySelectorAll("input[data-cat-of]").forEach(b => { b.checked = true; });
    for (const part of text.split("~").filter(Boolean)) {
      const eq = part.indexOf("="), key = eq < 0 ? part.split(":")[0] : part.slice(0, eq);
      if (eq < 0) {
        const [, lo, hi] = part.split(":");
        [lo, hi].forEach((v, end) => { const i = panel.querySelector('input[data-range="' + key + '"][data-end="' + end + '"]');
          if (i && v !== undefined && v !== "" && isFinite(Number(v))) i.value = v; });
      } else if (key === "class") {
        const i = panel.querySelector("[data-filter-class]");
        if (i) i.value = part.slice(eq + 1);
      } else {
        const on = new Set(part.slice(eq + 1).split("."));
        panel.querySelectorAll('input[data-cat-of="' + key + '"]').forEach(b => { b.checked = on.has(b.value); });
      }
    }
    if (text) panel.open = true;
    readFilter(name);
    applyFilter(name);
  }

  // ---- detail on zoom: every point as quadtree tiles (dmd2report/report/tiles.py), script files loaded on demand
  // (script tags load from file://, fetch does not). Zoomed in s times (s >= tiles.start), the tiles of levels with
  // 2^z <= 2s that meet the view load (shallow first, at most MAX_TILES, MAX_LOADING at a time, cached); their points
  // the map does not draw fill the "detail" layers (same styles; hover names them, they have no image), filtered as
  // the drawn ones; the density images are redrawn over the view from them, each point of the deepest level loaded
  // standing for sub/n points of its tile's region. ----
  // TILE_BURST_MS: a tile's arrival waits this long for the next before the view is redrawn (one redraw a burst).
  const MAX_TILES = 64, MAX_LOADING = 4, KEEP_POINTS = 600000, DETAIL_BINS = 256, TILE_BURST_MS = 120;
  const TYPES = { u1: Uint8Array, i1: Int8Array, u2: Uint16Array, i2: Int16Array };
  const tiles = Site.tiles = { cache: new Map(), loading: new Set(), queue: [], failed: new Set(), want: [], zmax: -1, shown: 0, version: 0 };
  function bytesOf(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  async function decodeTile(meta) {
    const stream = new Blob([bytesOf(meta.data)]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buf = await new Response(stream).arrayBuffer(), I = data().tiles, none = I.none, T = { key: meta.key, n: meta.n, sub: meta.sub };
    for (const [col, type, at, len] of meta.cols) T[col] = new TYPES[type](buf, at, len);
    const [bx0, by0, bx1, by1] = meta.box, qx = T.x, qy = T.y;
    T.x = new Float64Array(meta.n); T.y = new Float64Array(meta.n);
    for (let i = 0; i < meta.n; i++) { T.x[i] = bx0 + qx[i] / (none - 1) * (bx1 - bx0); T.y[i] = by0 + qy[i] / (none - 1) * (by1 - by0); }
    for (const [k, [lo, hi]] of Object.entries(I.fields)) {  // quantised fields back to values (null: none), as the site's points hold them
      const q = T[k];
      T[k] = Array.from(q, v => v === none ? null : lo + v / (none - 1) * (hi - lo));
    }
    const real = data().variants.indexOf("real");
    T.gen = Uint8Array.from(T.variant, v => v === real ? 0 : 1);
    T.ids = new TextDecoder().decode(new Uint8Array(buf, meta.idAt)).split("\n").map(s => meta.prefix + s);
    return T;
  }
  window.DMD2_TILE = function (meta) {
    decodeTile(meta).then(T => { tiles.cache.set(T.key, T); }, () => { tiles.failed.add(meta.key); })
      .finally(() => {   // one redraw once a burst of tiles is in (each would be a full paint), none while the view moves
        tiles.loading.delete(meta.key);
        pumpTiles();
        if (!LOD.moving.map) scheduleDetail("map", tiles.loading.size ? TILE_BURST_MS : 0);
      });
  };
  function pumpTiles() {
    while (tiles.loading.size < MAX_LOADING && tiles.queue.length) {
      const key = tiles.queue.shift();
      if (tiles.cache.has(key) || tiles.loading.has(key) || !tiles.want.includes(key)) continue;
      tiles.loading.add(key);
      const old = document.querySelector('script[data-tile="' + key + '"]');
      if (old) old.remove();   // evicted earlier: its script runs again
      const s = document.createElement("script");
      s.src = "tiles/" + key + ".js";
      s.dataset.tile = key;
      s.onerror = () => { tiles.failed.add(key); tiles.loading.delete(key); pumpTiles(); };
      document.head.appendChild(s);
    }
  }
  function viewBox(f) {
    const X = f.fig.x_range, Y = f.fig.y_range;
    return [Math.min(X.start, X.end), Math.min(Y.start, Y.end), Math.max(X.start, X.end), Math.max(Y.start, Y.end)];
  }
  function wantedTiles(f) {  // the tiles that meet the view, shallow levels first, and the deepest level they reach
    const I = data().tiles, [ex0, ey0, ex1, ey1] = I.extent, [vx0, vy0, vx1, vy1] = viewBox(f);
    const s = Math.min((ex1 - ex0) / (vx1 - vx0), (ey1 - ey0) / (vy1 - vy0)), keys = [];
    if (!(s >= I.start)) return { s: s, keys: keys, zmax: -1 };
    const zmax = Math.min(I.levels - 1, Math.floor(Math.log2(2 * s)));
    for (let z = 0; z <= zmax; z++) {
      const side = 1 << z, cell = v => Math.max(0, Math.min(side - 1, Math.floor(v * side)));
      const tx0 = cell((vx0 - ex0) / (ex1 - ex0)), tx1 = cell((vx1 - ex0) / (ex1 - ex0));
      const ty0 = cell((vy0 - ey0) / (ey1 - ey0)), ty1 = cell((vy1 - ey0) / (ey1 - ey0));
      for (let ty = ty0; ty <= ty1; ty++) for (let tx = tx0; tx <= tx1; tx++) {
        const key = z + "/" + tx + "_" + ty;
        if (I.tiles[key] && keys.length < MAX_TILES) keys.push(key);
      }
    }
    return { s: s, keys: keys, zmax: zmax };
  }
  function detailLayers(f) {
    if (!f.detail) {
      const real = byName(f.name + ":detail:real"), gens = byPrefix(f.name + ":detail:gen:");
      f.detail = { real: real, gens: gens, all: (real ? [real] : []).concat(gens) };
    }
    return f.detail;
  }
  const detailTimer = {};
  function scheduleDetail(name, wait) {
    if (!data() || !data().tiles) return;
    clearTimeout(detailTimer[name]);
    tiles.pending = true;
    detailTimer[name] = setTimeout(() => requestAnimationFrame(() => refreshDetail(name)), wait || 0);
  }
  function refreshDetail(name) {
    const f = resolve(name), I = data().tiles, st = view[name];
    if (!f || !I || !st || !st.colour) { tiles.pending = false; return; }
    const w = wantedTiles(f), D = detailLayers(f), real = data().variants.indexOf("real");
    tiles.want = w.keys; tiles.zmax = w.zmax;
    tiles.queue = w.keys.filter(k => !tiles.cache.has(k) && !tiles.loading.has(k) && !tiles.failed.has(k));
    pumpTiles();
    const loaded = w.keys.map(k => tiles.cache.get(k)).filter(Boolean);
    let cached = 0;
    tiles.cache.forEach(T => { cached += T.n; });
    if (cached > KEEP_POINTS) tiles.cache.forEach((T, k) => {   // past KEEP_POINTS, the tiles out of view go
      if (w.keys.includes(k)) return;
      tiles.cache.delete(k);
      const el = document.querySelector('script[data-tile="' + k + '"]');
      if (el) el.remove();
    });
    // Columns per detail layer: the loaded points in the view (and a margin) that the map does not draw, of layers on,
    // passing the filters.
    const [vx0, vy0, vx1, vy1] = viewBox(f), mx = (vx1 - vx0) * 0.25, my = (vy1 - vy0) * 0.25;
    const test = filterTest(name), genLayer = {}, mode = st.colour;
    data().variants.filter(v => v !== "real").forEach((v, i) => { genLayer[data().variants.indexOf(v)] = i; });
    const cols = D.all.map(() => ({ x: [], y: [], color: [], line: [], fa: [], lw: [] })), refs = D.all.map(() => []);
    const layerOn = D.all.map((r, li) => li === 0 && D.real ? f.real.some(p => p.visible) : (f.gens[li - (D.real ? 1 : 0)] || {}).visible);
    let count = 0;
    for (const T of loaded) {
      const value = (key, j) => key === "covers" ? (T.gen[j] ? null : T.covers[j]) : T[key][j];
      for (let j = 0; j < T.n; j++) {
        if (T.drawn[j]) continue;
        const x = T.x[j], y = T.y[j];
        if (x < vx0 - mx || x > vx1 + mx || y < vy0 - my || y > vy1 + my) continue;
        const li = T.variant[j] === real ? 0 : 1 + genLayer[T.variant[j]];
        if (!layerOn[li] || (test && !test(T, j, value))) continue;
        const s = pointStyle(mode, j, st.alpha.generated, T), c = cols[li];
        c.x.push(x); c.y.push(y); c.color.push(s[0]);
        if (li) { c.fa.push(s[1]); c.line.push(s[2]); c.lw.push(s[3]); }
        refs[li].push([T, j]);
        count++;
      }
    }
    D.all.forEach((r, li) => {
      const c = cols[li];
      r.data_source.data = li === 0 && D.real ? { x: c.x, y: c.y, color: c.color } : c;
      if (li === 0 && D.real) r.glyph.fill_alpha = st.alpha.real;
      r._refs = refs[li];
      r.visible = layerOn[li];
    });
    if (st.lod) drawSample(name);   // new detail columns while the view moves: their sample
    drawDensity(name, f, w, loaded);
    tiles.shown = count;
    tiles.version++;
    tiles.pending = tiles.loading.size > 0 || tiles.queue.length > 0;
    filterStatus(name);
    const note = document.querySelector('[data-detail-status="' + name + '"]');
    if (note) {
      note.dataset.count = count;
      note.textContent = !w.keys.length ? "" : "+ " + count.toLocaleString("en") + " more points of this view from " + loaded.length +
        " tiles" + (tiles.pending ? " (loading…)" : "");
    }
  }
  Site.detailCount = function (name) { const f = resolve(name); return f ? detailLayers(f).all.reduce((n, r) => n + r.data_source.data.x.length, 0) : 0; };
  Site.detailPoints = function (name) {  // what the detail layers draw, as the filters see it (tests)
    const f = resolve(name);
    return f ? detailLayers(f).all.flatMap(r => (r._refs || []).map(([T, j]) => ({ id: T.ids[j], variant: data().variants[T.variant[j]],
      cls: T.cls[j], dist: T.dist[j], trust: T.trust[j], covered: T.covered[j], visible: r.visible }))) : [];
  };
  function nearestDetail(f, x, y, radiusPx) {
    const fig = f.fig, xr = fig.x_range, yr = fig.y_range;
    const kx = Math.abs(fig.inner_width / (xr.end - xr.start)), ky = Math.abs(fig.inner_height / (yr.end - yr.start));
    let best = null, bestD = radiusPx * radiusPx;
    for (const r of detailLayers(f).all) {
      if (!r.visible || !r._refs) continue;
      const d = r.data_source.data;
      for (let j = 0; j < d.x.length; j++) {
        const dx = (d.x[j] - x) * kx, dy = (d.y[j] - y) * ky, d2 = dx * dx + dy * dy;
        if (d2 < bestD) { bestD = d2; best = { T: r._refs[j][0], i: r._refs[j][1] }; }
      }
    }
    return best;
  }
  function showTileCard(hit) {  // a tile point: id, set, class (the site has no image of it)
    if (!card) { card = el("div", "hover-card"); card.id = "dmd2-hover"; card.hidden = true; document.body.appendChild(card); }
    const T = hit.T, i = hit.i, key = "tile:" + T.key + ":" + i;
    if (Site.cardRow !== key) {
      const d = data(), S = d.style, v = d.variants[T.variant[i]], dl = el("dl");
      const add = (k, val) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", val)); };
      add("id", T.ids[i]);
      add("set", T.gen[i] ? "generated · " + ((S.variants[v] && S.variants[v].words) || v) : "real");
      add(T.gen[i] && !classSet(v) ? "seed of" : "class", className(T.cls[i]));
      card.replaceChildren(thumb(-1, 72), dl, el("p", "muted small", "loaded on zoom: no image or neighbours in this site"));
      card.dataset.tile = T.ids[i];
      delete card.dataset.row;
      Site.cardRow = key;
    }
    placeCard();
  }
  // The density images over the view at DETAIL_BINS per side, from the loaded tiles; zoomed out, the rendered ones.
  function drawDensity(name, f, w, loaded) {
    const d = data(), S = d.style, real = d.variants.indexOf("real"), [vx0, vy0, vx1, vy1] = viewBox(f), B = DETAIL_BINS;
    const gens = d.variants.filter(v => v !== "real");
    for (const m of byPrefix(name + ":density:")) {
      const g = m.glyph;
      if (!m._orig) m._orig = { data: m.data_source.data, x: g.x, y: g.y, dw: g.dw, dh: g.dh };
      if (!loaded.length) {
        if (m.data_source.data !== m._orig.data) { m.data_source.data = m._orig.data; g.setv({ x: m._orig.x, y: m._orig.y, dw: m._orig.dw, dh: m._orig.dh }); }
        continue;
      }
      if (!m.visible) continue;
      const [, , kind, li] = m.name.split(":"), v = kind === "0" ? real : d.variants.indexOf(gens[Number(li)]), byClass = kind === "cls";
      const count = new Float64Array(B * B), rgb = byClass ? new Float64Array(B * B * 3) : null;
      for (const T of loaded) {
        const wt = Number(T.key.split("/")[0]) === w.zmax ? T.sub / T.n : 1;
        for (let j = 0; j < T.n; j++) {
          if (T.variant[j] !== v || (byClass && T.cls[j] < 0)) continue;
          const cx = Math.floor((T.x[j] - vx0) / (vx1 - vx0) * B), cy = Math.floor((T.y[j] - vy0) / (vy1 - vy0) * B);
          if (cx < 0 || cx >= B || cy < 0 || cy >= B) continue;
          const c = cy * B + cx;
          count[c] += wt;
          if (byClass) { const h = hex(classStyle(T.cls[j])[0]); rgb[3 * c] += wt * h[0]; rgb[3 * c + 1] += wt * h[1]; rgb[3 * c + 2] += wt * h[2]; }
        }
      }
      let top = 0;
      for (let c = 0; c < B * B; c++) if (count[c] > top) top = count[c];
      const base = hex(kind === "0" ? S.real : (S.variants[gens[Number(li)]] || { colour: S.real }).colour), maxA = kind === "0" ? 150 : 200;
      const px = new Uint8Array(B * B * 4);   // RGBA, row 0 at the bottom (image_rgba)
      for (let c = 0; c < B * B; c++) {
        if (!count[c]) continue;
        const col = byClass ? [rgb[3 * c] / count[c], rgb[3 * c + 1] / count[c], rgb[3 * c + 2] / count[c]] : base;
        px[4 * c] = col[0]; px[4 * c + 1] = col[1]; px[4 * c + 2] = col[2];
        px[4 * c + 3] = Math.round(40 + (maxA - 40) * Math.log1p(count[c]) / Math.log1p(top));
      }
      const Nd = m._orig.data.image[0].constructor;
      m.data_source.data = { image: [new Nd(new Uint32Array(px.buffer), [B, B])] };
      g.setv({ x: { value: vx0 }, y: { value: vy0 }, dw: { value: vx1 - vx0 }, dh: { value: vy1 - vy0 } });
    }
  }

  // ---- one WebGL copy per run of WebGL layers. BokehJS copies its WebGL canvas onto the page after every WebGL
  // renderer, drawn or not (a full-canvas drawImage, a read-back where WebGL is software): with the map's layers
  // (density images, points, detail, highlight) that copying was most of a pan frame's cost and grew with the layers a
  // site has. Layers drawn one after another into the one WebGL canvas and copied once composite the same ("over" is
  // associative), so the copy waits for a renderer that draws on the 2-D canvas, or the end of the level. ----
  function drawsNothing(r) {
    const src = r.model.data_source;
    return !r.model.visible || (src && typeof src.get_length === "function" && src.get_length() === 0);
  }
  function batchWebglCopies(pv) {
    const cv = pv && pv.canvas_view;
    if (!cv || pv.dmd2Batched || typeof pv._paint_levels !== "function" || typeof cv.blit_webgl !== "function" ||
        !Array.isArray(pv.computed_renderer_views)) return;   // another BokehJS: its own painting stays
    pv.dmd2Batched = true;
    pv._paint_levels = function (ctx, level, clip, clipAll) {
      let pending = false, points = 0;
      const t0 = performance.now(), skip = this.dmd2Skip;
      for (const r of this.computed_renderer_views) {
        if (r.model.level != level || (skip && skip.has(r.model))) continue;   // skip: the moving sample stands in
        if (r.model.visible && r.model.glyph && r.model.glyph.constructor.__name__ === "Scatter") points += r.model.data_source.get_length() || 0;
        if (pending && !r.has_webgl) { cv.blit_webgl(ctx); pending = false; }
        ctx.save();
        if (clipAll || r.needs_clip) { ctx.beginPath(); ctx.rect(...clip.args); ctx.clip(); }
        r.paint(ctx);
        ctx.restore();
        if (r.has_webgl && !drawsNothing(r)) pending = true;
      }
      if (pending) cv.blit_webgl(ctx);
      if (level === "glyph") {
        paintTimed(this.model.name, performance.now() - t0);   // the copy waits for the raster
        LOD.painted[this.model.name] = points;                  // markers the paint sent to WebGL
      }
    };
  }
  Site.batchWebglCopies = function () {
    for (const doc of docs()) for (const m of models(doc))
      if (m.output_backend === "webgl" && Bokeh.index[m.id]) batchWebglCopies(Bokeh.index[m.id]);
  };

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
    document.querySelectorAll(".thumb-grid[data-sortable]").forEach(sortableGrid);
    document.addEventListener("change", e => {
      const t = e.target;
      if (!t.matches) return;
      if (t.matches("[data-layers]")) Site.setLayers(t.dataset.layers, t.value);
      if (t.matches("[data-traj]")) Site.setTrajectory("map", t.dataset.traj, t.checked);
      if (t.matches("[data-colour]")) Site.setColour(t.dataset.colour, t.value);
      if (t.matches("[data-labels]")) Site.setLabels(t.dataset.labels, t.checked);
      if (t.matches("[data-variant-layer]")) Site.setVariantLayer("map", Number(t.dataset.variantLayer), t.checked);
      if (t.matches("[data-cat-of]")) Site.applyFilter(t.closest("[data-filter-for]").dataset.filterFor);
      if (t.matches("[data-sort-for]")) { mapState(t.dataset.sortFor).sort[0] = t.value; renderSelection(t.dataset.sortFor); }
      if (t.matches("[data-compare-class]")) Site.showCompareClass(t.value);
      if (t.matches("[data-search-variants]")) {
        const name = t.dataset.searchVariants, input = document.querySelector('[data-search="' + name + '"]');
        mapState(name).withVariants = t.checked;
        Site.search(name, input ? input.value : "", false);
      }
    });
    document.addEventListener("input", e => {
      const t = e.target;
      if (t.matches && t.matches("[data-search]")) Site.search(t.dataset.search, t.value, false);
      if (t.matches && t.matches("[data-opacity]")) Site.setOpacity("map", t.dataset.opacity, Number(t.value));
      if (t.matches && t.matches("input[data-range], input[data-filter-class]")) Site.applyFilter(t.closest("[data-filter-for]").dataset.filterFor);
    });
    document.addEventListener("keydown", e => {
      const t = e.target;
      if (e.key === "Enter" && t.matches && t.matches("[data-search]")) Site.search(t.dataset.search, t.value, true);
    });
    document.querySelectorAll("[data-nbr-for]").forEach(p => { p._intro = Array.from(p.childNodes).map(n => n.cloneNode(true)); });
    document.addEventListener("click", e => {
      const b = e.target.closest && e.target.closest("[data-reset]");
      if (b) Site.reset(b.dataset.reset);
      const dir = e.target.closest && e.target.closest("[data-sort-dir]");
      if (dir) { const st = mapState(dir.dataset.sortDir); st.sort[1] = -st.sort[1]; renderSelection(dir.dataset.sortDir); }
      const clear = e.target.closest && e.target.closest("[data-filter-clear]");
      if (clear) Site.clearFilter(clear.dataset.filterClear);
    });
    document.addEventListener("click", e => {  // thumbnails on the map page open their point's neighbours
      const t = e.target.closest && e.target.closest(".thumb[data-row]");
      if (t && document.querySelector('[data-nbr-for="map"]')) showNeighbours("map", Number(t.dataset.row));
    });
    window.addEventListener("hashchange", applyHash);
    if (document.querySelector("[data-page-section]")) applyHash();
    whenFigures(() => {
      Site.batchWebglCopies();
      if (resolve("map") && data().style) {
        const opacity = document.querySelectorAll("[data-opacity]");
        opacity.forEach(i => { mapState("map").alpha[i.dataset.opacity] = Number(i.value); });
        // The class-conditioned sets (every generator's) at first; the other conditionings when asked for (the key).
        const st = mapState("map"), f = resolve("map");
        f.gens.forEach(r => { const row = r.data_source.data.row[0], i = Number(r.name.split(":").pop());
          if (row !== undefined && !classSet(variantOf(row))) st.off.add(i); });
        st.defaultOn = f.gens.map(r => Number(r.name.split(":").pop())).filter(i => !st.off.has(i)).join(".");
        filterPanel("map");
        followMoves("map");
        Site.setColour("map", document.querySelector('[data-fig="map"]').dataset.colorBy);
      }
      applyTheme();
      if (window.matchMedia) matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
      applyHash();
      Site.ready = true;
      Site.readyAt = performance.now();
      document.body.dataset.ready = "1";
    });
  });
})();
