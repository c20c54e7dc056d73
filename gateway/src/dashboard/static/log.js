// A job's log on its page, followed live: pieces are read from /jobs/ID/logs.json after the
// last one shown; while "Follow" is ticked each read waits (up to 15 s) for new pieces, and the
// view keeps to the end. Stops at the log's end (the job ended and everything was read).
(function () {
  "use strict";
  const pre = document.getElementById("log");
  const follow = document.getElementById("follow");
  const status = document.getElementById("log-status");
  const job = pre.dataset.job;
  let after = { attempt: 0, seq: 0 }, shownAttempt = 0;
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

  function append(piece) {
    if (piece.attempt !== shownAttempt) {
      const head = document.createElement("span");
      head.className = "attempt";
      head.textContent = (shownAttempt ? "\n" : "") + "── attempt " + piece.attempt + " ──\n";
      pre.appendChild(head);
      shownAttempt = piece.attempt;
    }
    const span = document.createElement("span");
    span.className = piece.stream;
    span.textContent = piece.data;
    pre.appendChild(span);
  }

  async function run() {
    // Bounded: a day of 15 s waits, then the page asks for a reload.
    for (let round = 0; round < 6000; round++) {
      const wait = follow.checked ? 15000 : 0;
      let page;
      try {
        const r = await fetch("/jobs/" + encodeURIComponent(job) + "/logs.json?after_attempt=" + after.attempt +
          "&after_seq=" + after.seq + "&wait_ms=" + wait, { credentials: "same-origin" });
        if (r.status === 401) { location.href = "/login?ended=1"; return; }
        if (!r.ok) throw new Error("the gateway answered " + r.status);
        page = await r.json();
      } catch (e) {
        status.textContent = "the log could not be read (" + e.message + "); trying again";
        await sleep(2000);
        continue;
      }
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      page.pieces.forEach(append);
      after = { attempt: page.next_attempt, seq: page.next_seq };
      if (follow.checked && atEnd) pre.scrollTop = pre.scrollHeight;
      if (page.done) {
        status.textContent = pre.childNodes.length ? "end of log" : "the job wrote nothing";
        pre.dataset.done = "true";
        return;
      }
      status.textContent = follow.checked ? "following" : "paused (tick Follow to read on)";
      if (!follow.checked && !page.pieces.length) {
        await new Promise((done) => follow.addEventListener("change", done, { once: true }));
      }
    }
    status.textContent = "stopped following: reload the page to read on";
  }
  run();
})();
