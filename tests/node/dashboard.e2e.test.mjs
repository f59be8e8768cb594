// End-to-end: the dashboard served by flux-bff, in headless Chromium (Debian `chromium`,
// driven by playwright-core). It waits for live data, checks every card, that the data came
// over permessage-deflate, a moving ticker price, a city switch and the degraded state, and
// saves a screenshot to target/dashboard.png.
// Chromium: FLUX_CHROMIUM or /usr/bin/chromium (apt-get install -y chromium).

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { chromium } from "playwright-core";

import { metric } from "./support/metrics.mjs";
import { repo, startServer } from "./support/server.mjs";

const executablePath = process.env.FLUX_CHROMIUM || "/usr/bin/chromium";
const screenshot = process.env.FLUX_SCREENSHOT || path.join(repo, "target", "dashboard.png");
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe("dashboard in headless Chromium", () => {
  let server;
  let context;
  let page;
  let profile;
  const pageErrors = [];

  before(async () => {
    assert.ok(
      fs.existsSync(executablePath),
      `Chromium not found at ${executablePath}: install it with 'apt-get install -y chromium' (or set FLUX_CHROMIUM)`,
    );
    server = await startServer({
      FLUX_SIM__TICKER_INTERVAL: "300ms",
      FLUX_SIM__MOVERS_INTERVAL: "5s",
      FLUX_SIM__SEED: "7",
    });
    profile = fs.mkdtempSync(path.join(os.tmpdir(), "flux-chromium-"));
    // launchPersistentContext is how playwright takes a (fresh) --user-data-dir.
    context = await chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      viewport: { width: 1440, height: 900 },
      deviceScaleFactor: 1,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(server.url + "/");
  });

  after(async () => {
    await context?.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly\n${server?.logs()}`);
  });

  const byTestId = (id) => page.locator(`[data-testid="${id}"]`);
  const text = async (id) => (await byTestId(id).first().textContent())?.trim();

  it("connects like the real frontend and goes live", async () => {
    await page.waitForSelector('[data-testid="connection-state"][data-state="live"]', { timeout: 10_000 });
    assert.equal(await text("connection-state"), "Live");
    await page.waitForSelector('[data-testid="readiness"][data-state="ready"]', { timeout: 10_000 });
    const guestId = await page.evaluate(() => localStorage.getItem("flux_guest_id"));
    assert.match(guestId, UUID);
    assert.equal(await text("guest-id"), guestId.slice(0, 8));
  });

  it("shows live values in every card", async () => {
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="ticker-row"]').length >= 10, null, { timeout: 10_000 });
    for (const row of await byTestId("ticker-row").all()) {
      assert.match(await row.locator(".price").textContent(), /^\$[\d,]+\.\d+$/);
    }
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="topcoin-row"] .live-price').length === 10, null, { timeout: 10_000 });
    await page.waitForFunction(
      () => [...document.querySelectorAll('[data-testid="topcoin-row"] .live-price')].every((e) => /^\$[\d,]+\.\d+$/.test(e.textContent)),
      null,
      { timeout: 10_000 },
    );
    await page.waitForSelector('[data-testid="gainer-row"]', { timeout: 10_000 });
    assert.ok((await byTestId("gainer-row").count()) >= 5);
    assert.ok((await byTestId("loser-row").count()) >= 5);
    assert.match(await byTestId("gainer-row").first().textContent(), /\$[\d.,]+[\s\S]*[+−][\d.]+%/);
    await page.waitForSelector('[data-testid="news-item"]', { timeout: 10_000 });
    assert.ok((await byTestId("news-item").count()) >= 6);
    assert.ok((await byTestId("news-item").first().locator(".title").textContent()).length > 10);
    await page.waitForSelector('[data-testid="stock-gainer-row"]', { timeout: 10_000 });
    assert.ok((await byTestId("stock-gainer-row").count()) >= 5);
    assert.ok((await byTestId("stock-loser-row").count()) >= 5);
    assert.match(await byTestId("stock-loser-row").first().textContent(), /\$\d+\.\d{2}[\s\S]*−\d+\.\d{2}%/);
    await page.waitForSelector('[data-testid="weather-temp"]', { timeout: 10_000 });
    assert.equal(await text("weather-city"), "New Delhi");
    assert.match(await text("weather-temp"), /^-?\d+°C$/);
    assert.ok((await text("weather-condition")).length > 2);
    assert.match(await text("weather-aqi"), /PM2\.5\s*[\d.]+/);
  });

  it("negotiated permessage-deflate: the live data above came in compressed frames", async () => {
    // The browser's WebSocket of the page's socket.io-client (a top-level `const socket`).
    const extensions = await page.evaluate(() => socket.io.engine.transport.ws.extensions);
    assert.equal(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    // This browser is the gateway's only client: every compressed frame was written to it.
    const compressed = await metric(server, "flux_ws_compressed_frames_total");
    assert.ok(compressed >= 10, `compressed frames written: ${compressed}`);
  });

  it("updates a ticker price live", async () => {
    const price = page.locator('[data-testid="ticker-price-BTC-USD"]');
    const before = await price.textContent();
    await page.waitForFunction(
      (old) => document.querySelector('[data-testid="ticker-price-BTC-USD"]').textContent !== old,
      before,
      { timeout: 10_000 },
    );
    assert.notEqual(await price.textContent(), before);
    await page.waitForSelector(".flash-up, .flash-down", { state: "attached", timeout: 5_000 });
  });

  it("saves a screenshot", async () => {
    await page.waitForTimeout(1_500); // a few ticks of sparkline
    fs.mkdirSync(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    assert.ok(fs.statSync(screenshot).size > 50_000);
  });

  it("switches the city and shows the new city's weather", async () => {
    await page.selectOption('[data-testid="city-select"]', "Tokyo");
    await page.waitForFunction(() => document.querySelector('[data-testid="weather-city"]')?.textContent === "Tokyo", null, { timeout: 10_000 });
    assert.match(await text("weather-temp"), /^-?\d+°C$/);
    assert.equal(await page.evaluate(() => localStorage.getItem("flux_city")), "Tokyo");
    await page.selectOption('[data-testid="city-select"]', "London");
    await page.waitForFunction(() => document.querySelector('[data-testid="weather-city"]')?.textContent === "London", null, { timeout: 10_000 });
  });

  it("shows the degraded state when /readyz answers 503", async () => {
    await page.route("**/readyz", (route) =>
      route.fulfill({ status: 503, contentType: "application/json", body: '{"ready":false}' }),
    );
    await page.waitForSelector('[data-testid="readiness"][data-state="degraded"]', { timeout: 10_000 });
    assert.ok(await byTestId("degraded-banner").isVisible());
    await page.unroute("**/readyz");
    await page.waitForSelector('[data-testid="readiness"][data-state="ready"]', { timeout: 10_000 });
    assert.ok(!(await byTestId("degraded-banner").isVisible()));
  });

  it("raised no page error", () => {
    assert.deepEqual(pageErrors, []);
  });
});
