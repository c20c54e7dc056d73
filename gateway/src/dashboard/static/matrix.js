// The matrix heatmap: one canvas, not a DOM node per cell, so a thousand clusters (a million
// cells) draw in one pass. Data: /matrix.json, {names, labels, states, modes}: `states` and
// `modes` hold one character per cell, row-major (from * n + to): states r(eachable) s(uspect)
// u(nreachable) ?(unknown); modes d(irect) r(elay).
(function () {
  "use strict";
  const canvas = document.getElementById("matrix");
  const detail = document.getElementById("cell");
  const group = document.getElementById("group");
  const colour = { r: "#1b7f3b", s: "#b36b00", u: "#b3261e", "?": "#6b6b6b" };
  const word = { r: "reachable", s: "suspect", u: "unreachable", "?": "unknown" };
  const groupList = document.getElementById("groups");
  let data = null, order = [], groups = [], size = 1, gutter = 0, at = { from: 0, to: 0 }, asked = 0;

  function layout() {
    const n = order.length;
    gutter = n <= 60 ? 90 : 0;
    size = Math.max(1, Math.min(24, Math.floor(900 / Math.max(n, 1))));
    canvas.width = gutter + n * size;
    canvas.height = gutter + n * size;
  }

  function draw() {
    const n = order.length, ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const total = data.names.length;
    for (let i = 0; i < n; i++) {
      const from = order[i];
      for (let j = 0; j < n; j++) {
        const to = order[j];
        const k = from * total + to;
        ctx.fillStyle = from === to ? "#ffffff" : colour[data.states[k]] || colour["?"];
        ctx.fillRect(gutter + j * size, gutter + i * size, size, size);
        if (from !== to && size >= 6 && data.modes[k] === "r") {
          ctx.fillStyle = "#ffffff";
          const d = Math.max(2, Math.floor(size / 4));
          ctx.fillRect(gutter + j * size + (size - d) / 2, gutter + i * size + (size - d) / 2, d, d);
        }
      }
    }
    if (gutter) {
      ctx.fillStyle = "#1a1a1a";
      ctx.font = Math.min(12, size) + "px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      for (let i = 0; i < n; i++) {
        const name = data.names[order[i]];
        ctx.textAlign = "right";
        ctx.fillText(name, gutter - 4, gutter + i * size + size / 2, gutter - 6);
        ctx.save();
        ctx.translate(gutter + i * size + size / 2, gutter - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(name, 0, 0, gutter - 6);
        ctx.restore();
      }
    }
    // Group boundaries: a dark line across the whole matrix where a group starts.
    if (groups.length > 1) {
      ctx.fillStyle = "#1a1a1a";
      const w = Math.max(1, Math.min(3, Math.floor(size / 4) || 1));
      for (const g of groups.slice(1)) {
        const p = gutter + g.start * size;
        ctx.fillRect(gutter, p - Math.floor(w / 2), n * size, w);
        ctx.fillRect(p - Math.floor(w / 2), gutter, w, n * size);
      }
    }
    if (n) {
      ctx.strokeStyle = "#0b5cad";
      ctx.lineWidth = 2;
      ctx.strokeRect(gutter + at.to * size, gutter + at.from * size, size, size);
    }
  }

  function show() {
    if (!order.length) { detail.textContent = "No clusters registered yet."; return; }
    const from = order[at.from], to = order[at.to];
    const a = data.names[from], b = data.names[to];
    if (from === to) { detail.textContent = a + " (itself)"; return; }
    const where = group.value ? " [" + groupOf(from) + " -> " + groupOf(to) + "]" : "";
    detail.textContent = a + " -> " + b + ": " + word[data.states[from * data.names.length + to]] + "; loading…";
    // Only the answer about the cell selected last is shown: an earlier one may come later.
    const ask = ++asked;
    fetch("/matrix/cell?from=" + encodeURIComponent(a) + "&to=" + encodeURIComponent(b), { credentials: "same-origin" })
      .then(r => r.ok ? r.json() : Promise.reject(r.status))
      .then(c => {
        if (ask !== asked) return;
        const rtt = c.rtt_ms == null ? "no rtt" : "rtt " + c.rtt_ms.toFixed(1) + " ms";
        const loss = c.loss == null ? "loss unknown" : "loss " + (100 * c.loss).toFixed(0) + "%";
        const age = c.age_ms == null ? "never reported" : "reported " + c.age_ms + " ms ago";
        detail.textContent = a + " -> " + b + ": " + c.state + ", " + rtt + ", " + loss + ", " + age + "; outputs go " + c.mode + where;
      })
      .catch(() => { if (ask === asked) detail.textContent = a + " -> " + b + ": details could not be read"; });
  }

  // The group a cluster is in: none (by name), its whole label set, or whether it has one label.
  function groupOf(i) {
    const how = group.value;
    if (!how) return "";
    if (how === "*") return data.labels[i].length ? [...data.labels[i]].sort().join(", ") : "(no labels)";
    return data.labels[i].includes(how) ? "label " + how : "without " + how;
  }

  function reorder() {
    const idx = data.names.map((_, i) => i), key = idx.map(groupOf);
    const with1 = group.value && group.value !== "*";
    idx.sort((x, y) => {
      // A chosen label's group first; label sets in their order; then names.
      const kx = with1 ? (key[x].startsWith("label ") ? 0 : 1) : key[x];
      const ky = with1 ? (key[y].startsWith("label ") ? 0 : 1) : key[y];
      if (kx !== ky) return kx < ky ? -1 : 1;
      return data.names[x] < data.names[y] ? -1 : data.names[x] > data.names[y] ? 1 : 0;
    });
    order = idx;
    groups = [];
    order.forEach((c, i) => {
      if (!groups.length || groups[groups.length - 1].name !== key[c]) groups.push({ name: key[c], start: i, len: 0 });
      groups[groups.length - 1].len++;
    });
    if (!group.value) groups = [];
    canvas.dataset.groups = groups.map((g) => g.name + ":" + g.len).join(";");
    groupList.textContent = "";
    for (const g of groups) {
      const li = document.createElement("li");
      li.textContent = g.name + ": " + g.len + (g.len === 1 ? " cluster" : " clusters") +
        " (rows and columns " + (g.start + 1) + "–" + (g.start + g.len) + ")";
      groupList.appendChild(li);
    }
    layout();
    draw();
  }

  function load() {
    return fetch("/matrix.json", { credentials: "same-origin" })
      .then(r => { if (r.status === 401) { location.href = "/login"; } return r.json(); })
      .then(d => { data = d; reorder(); canvas.dataset.drawn = String(d.names.length); });
  }

  canvas.addEventListener("click", e => {
    const rect = canvas.getBoundingClientRect();
    const x = Math.floor((e.clientX - rect.left - gutter) / size), y = Math.floor((e.clientY - rect.top - gutter) / size);
    if (x < 0 || y < 0 || x >= order.length || y >= order.length) return;
    at = { from: y, to: x };
    draw();
    show();
  });
  canvas.addEventListener("keydown", e => {
    const n = order.length, step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
    if (!step || !n) return;
    e.preventDefault();
    at = { from: (at.from + step[0] + n) % n, to: (at.to + step[1] + n) % n };
    draw();
    show();
  });
  group.addEventListener("change", reorder);
  // Live: the gateway says when the matrix changed (server-sent events), and it is read again.
  load().then(() => {
    const events = new EventSource("/events");
    events.addEventListener("matrix", () => load());
  });
})();
