// The clusters page, live: the gateway says (server-sent event `clusters`, with a digest) when
// what the page shows changed; when the digest is not the page's, the table is read again (the
// same URL, so the same filters) and replaced, without reloading the page.
(function () {
  "use strict";
  const events = new EventSource("/events");
  events.addEventListener("clusters", (event) => {
    const table = document.querySelector("table[data-digest]");
    if (!table || table.dataset.digest === event.data) return;
    fetch(location.href, { credentials: "same-origin" })
      .then(r => r.ok ? r.text() : Promise.reject(r.status))
      .then(html => {
        const page = new DOMParser().parseFromString(html, "text/html");
        const fresh = page.querySelector("table[data-digest]");
        if (!fresh) { location.href = "/login?ended=1"; return; }
        table.replaceWith(fresh);
        const count = document.querySelector(".count"), total = page.querySelector(".count");
        if (count && total) count.textContent = total.textContent;
        document.body.dataset.updated = String(Date.now());
      })
      .catch(() => {});
  });
})();
