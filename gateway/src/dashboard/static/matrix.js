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
  let data = null, order = [], size = 1, gutter = 0, at = { from: 0, to: 0 }, asked = 0;

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
        detail.textContent = a + " -> " + b + ": " + c.state + ", " + rtt + ", " + loss + ", " + age + "; outputs go " + c.mode;
      })
      .catch(() => { if (ask === asked) detail.textContent = a + " -> " + b + ": details could not be read"; });
  }

  function reorder() {
    const key = group.value, idx = data.names.map((_, i) => i);
    if (key) {
      idx.sort((x, y) => {
        const hx = data.labels[x].includes(key) ? 0 : 1, hy = data.labels[y].includes(key) ? 0 : 1;
        return hx - hy || (data.names[x] < data.names[y] ? -1 : 1);
      });
    }
    order = idx;
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
