// How long the dashboard's matrix page takes to draw in a real browser: sign in, then open
// /matrix RUNS times and measure, in the page, from the start of the navigation to the heatmap
// drawn (the canvas's data-drawn set), which includes fetching /matrix.json. Used by
// `scripts/bench scale` (bench/src/scale.rs) under its load of simulated clusters.
//
//   ATOLL_DASHBOARD=https://HOST:PORT ATOLL_TOKEN_FILE=F ATOLL_RUNS=3 node e2e/matrix-render.mjs
//
// Prints one line per run: `render_ms <ms> clusters <n>`.

import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const base = process.env.ATOLL_DASHBOARD;
const token = readFileSync(process.env.ATOLL_TOKEN_FILE, "utf8").trim();
const runs = Number(process.env.ATOLL_RUNS || "3");
const browser = await chromium.launch({
  executablePath: process.env.ATOLL_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 1000 } });
  const page = await context.newPage();
  await page.goto(base + "/login");
  await page.getByLabel("User token").fill(token);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/clusters/);
  for (let i = 0; i < runs; i++) {
    await page.goto(base + "/matrix");
    await page.waitForFunction(() => document.getElementById("matrix").dataset.drawn !== undefined, null, { timeout: 60000 });
    const [ms, n] = await page.evaluate(() => [performance.now(), document.getElementById("matrix").dataset.drawn]);
    console.log(`render_ms ${ms.toFixed(1)} clusters ${n}`);
  }
} finally {
  await browser.close();
}
