// Live pages: each part of a page that can change is marked `data-live="NAME"` with the digest
// of what it shows. The gateway's event stream (`body[data-events]`, else the clusters and the
// matrix) sends an event NAME with the digest of what it would show now; when that differs, the
// page is read again (the same URL, so the same filters) and only that part is replaced, without
// a reload. A page that now leads to the sign-in form means the session ended.
(function () {
  "use strict";
  const names = [...new Set([...document.querySelectorAll("[data-live]")].map((e) => e.dataset.live))];
  if (!names.length) return;
  const events = new EventSource(document.body.dataset.events || "/events");
  let asked = 0;
  function refresh(name, digest) {
    const part = document.querySelector('[data-live="' + name + '"]');
    if (!part || part.dataset.digest === digest) return;
    // Only the newest answer is used: an older one may come later.
    const ask = ++asked;
    fetch(location.href, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        if (ask !== asked) return;
        const page = new DOMParser().parseFromString(html, "text/html");
        const fresh = page.querySelector('[data-live="' + name + '"]');
        if (!fresh) { location.href = "/login?ended=1"; return; }
        const current = document.querySelector('[data-live="' + name + '"]');
        // Keep the keyboard where it was: the element with the same link, if any.
        const focused = document.activeElement && current.contains(document.activeElement)
          ? document.activeElement.getAttribute("href") : null;
        current.replaceWith(fresh);
        if (focused) {
          const again = fresh.querySelector('[href="' + CSS.escape(focused) + '"]');
          if (again) again.focus();
        }
        document.body.dataset.updated = String(Date.now());
      })
      .catch(() => {});
  }
  for (const name of names) events.addEventListener(name, (event) => refresh(name, event.data));
})();
