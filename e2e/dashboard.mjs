// The dashboard in a real headless browser: Debian's chromium, driven by playwright-core.
// Run by cli/tests/t84_dashboard_browser.rs against a dev mesh (aws, gcp, onprem; aws cannot
// reach onprem, onprem reaches aws):
//
//   ATOLL_DASHBOARD=https://127.0.0.1:PORT ATOLL_TOKEN_FILE=DIR/dashboard-token \
//   ATOLL_ADMIN_TOKEN_FILE=DIR/admin-token ATOLL_SCREENSHOTS=DIR node e2e/dashboard.mjs
//
// It asks the test to change the mesh with `ACTION what` lines on stdout and waits for
// `DONE what` (plus an answer, for a submission) on stdin; `SHOWN ...` lines say when the page
// showed something, for the test's figures.
//
// The dashboard's certificate is the dev mesh's CA's, which the browser does not know: the
// context ignores certificate errors (the test is about the pages, not about trust stores).
// Every step prints what it checks; the first failure exits non-zero with the page's text.

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";

const base = process.env.ATOLL_DASHBOARD;
const token = readFileSync(process.env.ATOLL_TOKEN_FILE, "utf8").trim();
const adminToken = readFileSync(process.env.ATOLL_ADMIN_TOKEN_FILE, "utf8").trim();
const shots = process.env.ATOLL_SCREENSHOTS;
const executablePath = process.env.ATOLL_CHROMIUM || "/usr/bin/chromium";
assert.ok(base && token && shots, "ATOLL_DASHBOARD, ATOLL_TOKEN_FILE and ATOLL_SCREENSHOTS are required");
mkdirSync(shots, { recursive: true });

const step = (text) => console.log("--- " + text);
// Ask the test that runs this script to change the mesh, and wait until it says it did.
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function act(what) {
  console.log("ACTION " + what);
  const answer = await lines.next();
  assert.ok(answer.value && answer.value.startsWith("DONE " + what), "the test's answer to " + what + ": " + answer.value);
  return answer.value.slice(("DONE " + what).length).trim();
}
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root, without a sandbox; no connections to the outside (this machine has none).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
let page;
async function signIn(secret) {
  await page.goto(base + "/login");
  await page.getByLabel("User token").fill(secret);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/clusters$/);
}
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 900 } });
  page = await context.newPage();

  step("a page without a session leads to the sign-in form");
  await page.goto(base + "/clusters");
  assert.match(page.url(), /\/login$/);
  await page.screenshot({ path: join(shots, "sign-in.png") });

  step("a wrong token gets a clear message, not JSON");
  await page.getByLabel("User token").fill("atoll-user." + "0".repeat(64));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").waitFor();
  assert.equal(await page.getByRole("alert").innerText(), "This token is unknown, revoked or expired.");

  step("signing in with the dev token opens the clusters page: aws, gcp, onprem");
  await page.getByLabel("User token").fill(token);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/clusters$/);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "atoll_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, "Strict");
  assert.ok(session.expires > Date.now() / 1000, "the cookie has an expiry");
  const names = await page.locator("tbody th[scope=row]").allInnerTexts();
  assert.deepEqual(names, ["aws", "gcp", "onprem"]);
  await page.screenshot({ path: join(shots, "clusters.png"), fullPage: true });

  step("live: gcp disabled at the gateway shows on the open page, without a reload");
  await page.evaluate(() => { window.notReloaded = true; });
  await act("disable gcp");
  const enabledOf = (name) => page.locator("tbody tr", { has: page.locator("th", { hasText: name }) }).locator("td").nth(2);
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll("tbody tr")].find((r) => r.querySelector("th").textContent === "gcp");
    return row && row.querySelectorAll("td")[2].textContent === "no";
  }, null, { timeout: 15000 });
  assert.equal(await enabledOf("gcp").innerText(), "no");
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  console.log("SHOWN disable " + Date.now());

  step("the label filter keeps the clusters that have it");
  await page.getByLabel("Label").selectOption("default");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/label=default/);
  const filtered = await page.locator("tbody th[scope=row]").allInnerTexts();
  assert.ok(filtered.includes("aws") && !filtered.includes("gcp"), "filtered: " + filtered);

  step("the matrix: aws->onprem in the unreachable colour, onprem->aws reachable");
  await page.getByRole("link", { name: "Matrix" }).click();
  await page.waitForFunction(() => document.getElementById("matrix").dataset.drawn === "3");
  const colour = (from, to) =>
    page.evaluate(([from, to]) => {
      const canvas = document.getElementById("matrix");
      const gutter = 90, size = Math.max(1, Math.min(24, Math.floor(900 / 3)));
      const [r, g, b] = canvas.getContext("2d").getImageData(gutter + to * size + 2, gutter + from * size + 2, 1, 1).data;
      return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
    }, [from, to]);
  // Rows and columns in name order: aws 0, gcp 1, onprem 2.
  assert.equal(await colour(0, 2), "#b3261e", "aws -> onprem is unreachable");
  assert.equal(await colour(2, 0), "#1b7f3b", "onprem -> aws is reachable");
  await page.screenshot({ path: join(shots, "matrix.png"), fullPage: true });

  step("live: a cut made now (aws refuses gcp) turns gcp->aws unreachable, without a reload");
  await page.evaluate(() => { window.notReloaded = true; });
  assert.equal(await colour(1, 0), "#1b7f3b", "gcp -> aws is reachable before the cut");
  await act("cut gcp->aws");
  await page.waitForFunction(() => {
    const canvas = document.getElementById("matrix");
    const gutter = 90, size = Math.max(1, Math.min(24, Math.floor(900 / 3)));
    const [r] = canvas.getContext("2d").getImageData(gutter + 0 * size + 2, gutter + 1 * size + 2, 1, 1).data;
    return r === 0xb3;
  }, null, { timeout: 20000, polling: 50 });
  console.log("SHOWN cut " + Date.now());
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");

  step("a cell's details: by keyboard, from the canvas");
  await page.locator("#matrix").focus();
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction(() => /aws -> onprem: unreachable, /.test(document.getElementById("cell").textContent));
  console.log("    " + (await page.locator("#cell").innerText()));

  step("grouped by label set: one group per set, each boundary drawn and listed");
  await page.getByLabel("Order and group by").selectOption("*");
  assert.equal(await page.locator("#matrix").getAttribute("data-groups"), "aws, default:1;gcp:1;onprem:1");
  assert.deepEqual(await page.locator("#groups li").allInnerTexts(), [
    "aws, default: 1 cluster (rows and columns 1–1)",
    "gcp: 1 cluster (rows and columns 2–2)",
    "onprem: 1 cluster (rows and columns 3–3)",
  ]);
  await page.getByLabel("Order and group by").selectOption("default");
  assert.equal(await page.locator("#matrix").getAttribute("data-groups"), "label default:1;without default:2");
  await page.screenshot({ path: join(shots, "matrix-grouped.png"), fullPage: true });

  step("the gateways page names the replica holding the lease");
  await page.getByRole("link", { name: "Gateways" }).click();
  assert.equal(await page.locator("strong", { hasText: "holds it" }).count(), 1);
  await page.screenshot({ path: join(shots, "gateways.png") });

  step("a read-scope user is offered no actions");
  await page.getByRole("link", { name: "Clusters" }).click();
  assert.equal(await page.getByRole("button", { name: /^(Enable|Disable) / }).count(), 0);

  step("signing out ends the session: pages lead to the sign-in form again");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login$/);
  await page.goto(base + "/clusters");
  assert.match(page.url(), /\/login/);

  step("an admin enables gcp from the clusters page");
  await signIn(adminToken);
  await page.getByRole("button", { name: "Enable gcp" }).click();
  await page.waitForURL(/\/clusters$/);
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll("tbody tr")].find((r) => r.querySelector("th").textContent === "gcp");
    return row && row.querySelectorAll("td")[2].textContent === "yes";
  }, null, { timeout: 15000 });

  step("the example pipeline's DAG turns finished live, each job's state recorded as it shows");
  const pipeline = await act("submit example");
  await page.goto(base + "/pipelines/" + pipeline);
  await page.evaluate(() => {
    window.notReloaded = true;
    window.seen = {};
    const look = () => {
      for (const node of document.querySelectorAll("svg.dag a.node")) {
        const key = node.dataset.job + " " + node.dataset.state;
        if (!(key in window.seen)) window.seen[key] = Date.now();
      }
    };
    window.watching = Date.now();
    look();
    window.looking = setInterval(look, 20);
  });
  await page.waitForFunction(() => {
    const nodes = [...document.querySelectorAll("svg.dag a.node")];
    return nodes.length === 9 && nodes.every((n) => n.dataset.state === "finished");
  }, null, { timeout: 90000, polling: 50 });
  const [watching, seen] = await page.evaluate(() => { clearInterval(window.looking); return [window.watching, window.seen]; });
  console.log("SHOWN watching " + watching);
  for (const [key, at] of Object.entries(seen)) console.log("SHOWN job " + key + " " + at);
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  assert.equal(await page.locator("#pipeline-status").innerText(), "finished");

  step("its edges: the relayed one marked relay, the others local, pull and push");
  const route = (from, to) => page.locator(`svg.dag g.edge[data-from="${from}"][data-to="${to}"]`).getAttribute("data-route");
  assert.equal(await route("test-onprem", "mirror"), "relay");
  assert.equal(await route("build", "test-onprem"), "pull");
  assert.equal(await route("test-onprem", "collect"), "push");
  assert.equal(await route("build", "package"), "local");
  const relayRow = page.locator('table.edges tr[data-from="test-onprem"][data-to="mirror"]');
  assert.match(await relayRow.innerText(), /relay[\s\S]*attempt 1: relay from onprem at /);
  await page.screenshot({ path: join(shots, "pipeline.png"), fullPage: true });

  step("a job's page: its attempt and its log");
  await page.locator('svg.dag a.node[data-job="build"]').click();
  await page.waitForURL(new RegExp("/jobs/" + pipeline + "\\.build$"));
  await page.waitForFunction(() => document.getElementById("log").dataset.done === "true", null, { timeout: 15000 });
  assert.match(await page.locator("#log").innerText(), /building on .* as /);
  assert.match(await page.locator("table.attempts tbody").innerText(), /aws\s+finished/);
  assert.match(await page.locator(".facts").innerText(), /Output\s+sha256:[0-9a-f]{64}, \d+ bytes/);
  await page.screenshot({ path: join(shots, "job.png"), fullPage: true });

  step("a new pipeline appears on the open pipelines page, without a reload");
  await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: "Pipelines" }).click();
  // The click returns before the navigation ends: mark the pipelines page itself, once loaded.
  await page.waitForURL(/\/pipelines$/);
  await page.waitForLoadState("load");
  await page.evaluate(() => { window.notReloaded = true; });
  const ticker = await act("submit ticker");
  const tickerPipeline = ticker.split(".")[0];
  const link = page.getByRole("link", { name: tickerPipeline, exact: true });
  await link.waitFor({ timeout: 15000 });
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  assert.ok(await page.getByRole("link", { name: pipeline, exact: true }).isVisible(), "the example is listed too");

  step("a running job's log is followed live, and cancelling it from its page kills it");
  await link.click();
  await page.locator('svg.dag a.node[data-job="ticker"]').click();
  await page.waitForURL(new RegExp("/jobs/" + ticker.replace(".", "\\.") + "$"));
  await page.evaluate(() => { window.notReloaded = true; });
  await page.waitForFunction(() => /tick 3\b/.test(document.getElementById("log").textContent), null, { timeout: 30000 });
  console.log("SHOWN follow " + Date.now());
  await page.getByRole("button", { name: "Cancel job" }).click();
  await page.waitForURL(new RegExp("/jobs/" + ticker.replace(".", "\\.") + "$"));
  await page.waitForFunction(() => document.getElementById("job-state").textContent === "killed", null, { timeout: 30000 });
  await page.waitForFunction(() => document.getElementById("log").dataset.done === "true", null, { timeout: 30000 });
  await page.screenshot({ path: join(shots, "job-cancelled.png"), fullPage: true });
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login$/);

  step("a read-scope user's cancel is refused with a message, and so is a form without its CSRF value");
  await signIn(token);
  await page.goto(base + "/jobs/" + ticker);
  assert.equal(await page.getByRole("button", { name: "Cancel job" }).count(), 0);
  const post = (path, body) => page.evaluate(([path, body]) =>
    fetch(path, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body })
      .then(async (r) => [r.status, await r.text()]), [path, body]);
  const csrf = await page.locator('form.signout input[name="csrf"]').getAttribute("value");
  const [scopeStatus, scopeText] = await post("/jobs/" + ticker + "/cancel", "csrf=" + csrf);
  assert.equal(scopeStatus, 403);
  assert.match(scopeText, /user browser lacks the submit scope/);
  const [csrfStatus, csrfText] = await post("/clusters/gcp/disable", "csrf=wrong");
  assert.equal(csrfStatus, 403);
  assert.match(csrfText, /CSRF value did not match/);
  assert.doesNotMatch(csrfText, /^\s*\{/, "a page, not JSON");

  step("signing out ends the session again");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login$/);
  await page.goto(base + "/pipelines");
  assert.match(page.url(), /\/login/);
  console.log("dashboard in the browser: every check held");
} catch (e) {
  console.error("FAILED: " + (e && e.message));
  if (page) {
    console.error("at " + page.url() + ":\n" + (await page.locator("body").innerText().catch(() => "")));
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}
