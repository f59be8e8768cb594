// The Grafana dashboard and the alert rules against a real Prometheus (Debian's package)
// scraping two flux-bff replicas in Kafka mode under a small load:
// - one Apache Kafka 4.1 broker (scripts/kafka.sh) and a redis-server as Valkey;
// - two gateways sharing a recovery secret; console producers writing tickers (10/s), news
//   and stocks (every 2 s, plus one invalid news record);
// - eight socket.io-client clients that connect like the frontend (userLocationUpdate and the
//   four requests), one flooding requests past its rate limit, one sending an unknown event,
//   one dropped and recovered, one reconnecting with a forged session id;
// - Prometheus scraping both every second, with deploy/prometheus/flux-bff.rules.yml loaded.
// Then every expression of every panel of deploy/grafana/flux-bff.json, its template variables
// substituted as Grafana does with "All" selected, goes through /api/v1/query and must return
// at least one series with a finite value; the dashboard's variables must have values; every
// rule must evaluate without error; every metric a rule names must exist. A misspelled metric
// name in a panel therefore fails the test, naming the panel.
// Needs java and the broker's jars (bash scripts/kafka.sh fetch), prometheus, redis-server.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { parse as parseYaml } from "yaml";

import { TICKER_TOPIC, startKafka, startProducer, tickerStream } from "../support/kafka.mjs";
import { connect, fixture, location, settleAll, sleep, startServer, waitReady } from "../support/server.mjs";
import { startRedis } from "../support/redis.mjs";
import { dashboardFile, dashboardPanels, durationSeconds, metricNames, rulesFile, startPrometheus, substitute } from "./support.mjs";

const SECRET = "flux-ops-test-recovery-secret-0123456789abcdef";
const NEWS_TOPIC = "news.service.event.updated";
const STOCKS_TOPIC = "stock.service.event.updated";
/** What $__rate_interval stands for: ten scrapes at 1 s (Grafana: at least four). */
const RATE_INTERVAL = "10s";
/** Load before the queries: longer than the rate interval, so every rate has samples. */
const LOAD_SECONDS = 16;

const log = (msg) => console.log(`[prometheus test ${new Date().toISOString().slice(11, 19)}] ${msg}`);

const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8"));
const rules = parseYaml(fs.readFileSync(rulesFile, "utf8"));

let kafka;
let redis;
let prom;
const gateways = [];
const producers = [];
const clients = [];
const timers = [];
let ticker;
const variableValues = {};

/** The broker's log, for a gateway that does not get ready. */
const brokerLog = () => `\n--- broker log:\n${kafka.logTail()}`;

async function gateway(clientId) {
  const server = await startServer({
    KAFKA_BROKER_ADDRESS: kafka.address,
    FLUX_KAFKA__CLIENT_ID: clientId,
    FLUX_VALKEY__URL: redis.url,
    FLUX_SOCKETIO__RECOVERY_SECRET: SECRET,
  });
  gateways.push(server);
  await waitReady(server, { timeout: 40_000, extra: brokerLog });
  log(`gateway ${clientId} ready on ${server.url}`);
  return server;
}

/** A client as the frontend: reconnects, sends userLocationUpdate and the four requests on every connect. */
function client(server, name) {
  const c = connect(server, { auth: { guestId: name }, reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500, randomizationFactor: 0 });
  c.connects = 0;
  c.connected.catch(() => {});
  c.socket.on("connect", () => {
    c.connects++;
    c.socket.emit("userLocationUpdate", location("Pune"));
    for (const request of ["cryptoTopCoinsRequest", "cryptoTopMoversRequest", "topNewsRequest", "stockTopPerformersRequest"]) c.socket.emit(request);
  });
  clients.push(c);
  return c;
}

const every = (ms, f) => timers.push(setInterval(f, ms));

async function waitTargetsUp(count, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const { activeTargets } = await prom.api("/api/v1/targets?state=active");
    const up = activeTargets.filter((t) => t.health === "up");
    if (up.length === count) return activeTargets;
    if (Date.now() > deadline) throw new Error(`Prometheus scrapes ${up.length} of ${count} targets up: ${JSON.stringify(activeTargets.map((t) => [t.scrapeUrl, t.health, t.lastError]))}`);
    await sleep(250);
  }
}

/**
 * Grafana's regex for "All" of a multi-value variable: the alternation of its values, regex
 * characters escaped for a PromQL string (a backslash in PromQL's double quotes is doubled:
 * 127.0.0.1 becomes 127\\.0\\.0\\.1 in the query text).
 */
const allRegex = (values) => `(${values.map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, "\\\\$&")).join("|")})`;

/** Prometheus' default scrape interval, in seconds. */
const DEFAULT_SCRAPE_SECONDS = 60;
/** The range windows of a PromQL text (`[5m]`, the range of `[5m:1m]`); label values left out. */
const windows = (expr) => [...String(expr ?? "").replace(/"(?:[^"\\]|\\.)*"/g, '""').matchAll(/\[([^\]:]+)(?::[^\]]*)?\]/g)].map((m) => m[1]);

describe("range windows", () => {
  // A window with fewer than two samples yields nothing: rate()/increase() over a 1m window
  // at Prometheus' default 1m scrape never returned a value, and the alert never fired.
  it("every range window of the rules spans at least four default scrapes", () => {
    const short = [];
    for (const r of rules.groups.flatMap((g) => g.rules)) {
      for (const window of windows(r.expr)) {
        if (durationSeconds(window) < 4 * DEFAULT_SCRAPE_SECONDS) short.push(`${r.alert ?? r.record}: [${window}]`);
      }
    }
    assert.deepEqual(short, [], `windows under ${4 * DEFAULT_SCRAPE_SECONDS} s`);
  });

  it("every range window of the dashboard is $__rate_interval (four scrapes of its data source)", () => {
    const fixed = [];
    for (const p of dashboardPanels(dashboard)) {
      for (const t of p.targets ?? []) {
        for (const window of windows(t.expr)) {
          if (window !== "$__rate_interval") fixed.push(`"${p.title}" [${t.refId}]: [${window}]`);
        }
      }
    }
    assert.deepEqual(fixed, [], "fixed windows in panels");
  });
});

describe("dashboard and alert rules on a real Prometheus", { timeout: 300_000 }, () => {
  before(async () => {
    log("starting Apache Kafka (scripts/kafka.sh) and redis-server");
    // Each server is assigned as soon as it is up, so that after() stops it even when the
    // other one failed to start.
    await settleAll([startKafka().then((k) => (kafka = k)), startRedis().then((r) => (redis = r))]);
    log("starting two flux-bff replicas in Kafka mode");
    const [ga, gb] = await settleAll([gateway("bff-a"), gateway("bff-b")]);
    log("starting console producers (tickers, news, stocks)");
    const [tickers, news, stocks] = await settleAll([TICKER_TOPIC, NEWS_TOPIC, STOCKS_TOPIC].map((t) => startProducer(kafka, t).then((p) => (producers.push(p), p))));
    log("starting Prometheus (1 s scrapes, the rule file loaded)");
    prom = await startPrometheus({ targets: gateways.map((g) => `127.0.0.1:${g.port}`), ruleFiles: [rulesFile] });
    await waitTargetsUp(2);
    log(`Prometheus on ${prom.url} scrapes both replicas`);

    // Load: tickers 10/s; news and stocks every 2 s; one invalid news record.
    ticker = tickerStream(tickers);
    const newsRecord = JSON.stringify(fixture("news.service.event.updated.json"));
    const stocksRecord = JSON.stringify(fixture("stock.service.event.updated.json"));
    every(2000, () => {
      news.send(newsRecord);
      stocks.send(stocksRecord);
    });
    news.send(JSON.stringify(fixture("news.service.event.updated.invalid.json")));
    for (let i = 0; i < 8; i++) client(i % 2 ? gb : ga, `ops-${i}`);
    await Promise.all(clients.map((c) => c.connected));
    log(`${clients.length} clients connected; load for ${LOAD_SECONDS} s`);
    const [flooder, stranger, blip, forger] = clients;
    // Over the per-socket rate limit (10/s, burst 20): about 20 dropped.
    for (let i = 0; i < 40; i++) flooder.socket.emit("cryptoTopCoinsRequest");
    stranger.socket.emit("notAnEvent", { x: 1 });
    await sleep(3000);
    // A blip: the transport closes, the client reconnects and recovers what it missed.
    blip.socket.io.engine.close();
    // A forged session id: recovery refused, a normal connection.
    if (forger.socket._pid) {
      const pid = forger.socket._pid;
      const i = Math.floor(pid.length / 2);
      forger.socket._pid = pid.slice(0, i) + (pid[i] === "A" ? "B" : "A") + pid.slice(i + 1);
    }
    forger.socket.io.engine.close();
    for (let s = 3; s < LOAD_SECONDS; s += 4) {
      await sleep(4000);
      log(`load: ${ticker.count()} tickers produced, reconnects: blip ${blip.connects - 1}, forged ${forger.connects - 1}`);
    }

    // Template variables: their own queries, through the API (label_values(metric, label)).
    for (const v of dashboard.templating.list.filter((t) => t.type === "query")) {
      const q = typeof v.query === "string" ? v.query : v.query.query;
      const m = q.match(/^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$/);
      assert.ok(m, `variable ${v.name}: only label_values(metric, label) is supported here, got ${q}`);
      const values = await prom.api(`/api/v1/label/${m[2]}/values?${new URLSearchParams({ "match[]": m[1] })}`);
      variableValues[v.name] = { query: q, values };
    }
  });

  after(async () => {
    for (const t of timers) clearInterval(t);
    for (const c of clients) c.socket.disconnect();
    const steps = [
      ["ticker stream", () => ticker?.stop()],
      ["Prometheus", () => prom?.stop()],
      ...producers.map((p, i) => [`producer ${i}`, () => p.stop()]),
      ...gateways.map((g) => [`gateway ${g.port}`, () => g.stop()]),
      ["redis-server", () => redis?.stop()],
      ["Kafka", () => kafka?.stop()],
    ];
    for (const [name, stop] of steps) {
      try {
        await stop();
      } catch (e) {
        console.error(`stopping ${name}: ${e.message}`);
      }
    }
  });

  it("the dashboard's template variables have values", () => {
    const empty = Object.entries(variableValues).filter(([, v]) => v.values.length === 0);
    for (const [name, v] of Object.entries(variableValues)) log(`variable ${name} = ${JSON.stringify(v.values)} (${v.query})`);
    assert.deepEqual(empty.map(([name, v]) => `${name}: ${v.query}`), [], "variables without values (their panels would show nothing)");
  });

  it("every panel expression returns data", async () => {
    // "All" of each variable; a variable without values stands for any value, so that its
    // panels are still checked (the test above reports the variable).
    const values = Object.fromEntries(Object.entries(variableValues).map(([name, v]) => [name, v.values.length ? allRegex(v.values) : ".+"]));
    const panels = dashboardPanels(dashboard);
    const failures = [];
    let count = 0;
    for (const panel of panels) {
      assert.ok(panel.targets?.length, `panel "${panel.title}" has no query`);
      for (const t of panel.targets) {
        count++;
        const expr = substitute(t.expr, values, RATE_INTERVAL);
        let verdict;
        try {
          const data = await prom.query(expr);
          const finite = data.result.filter((s) => Number.isFinite(Number(s.value?.[1])));
          verdict = data.result.length === 0 ? "no data" : finite.length === 0 ? `only NaN/Inf (${data.result.length} series)` : null;
          log(`${verdict ? "FAIL" : "ok  "} ${panel.title} [${t.refId}]: ${data.result.length} series${verdict ? ` (${verdict})` : ""}`);
        } catch (e) {
          verdict = `query error: ${e.message}`;
          log(`FAIL ${panel.title} [${t.refId}]: ${verdict}`);
        }
        if (verdict) failures.push(`"${panel.title}" [${t.refId}] ${verdict}: ${expr}`);
      }
    }
    log(`${count - failures.length} of ${count} panel expressions returned data`);
    assert.deepEqual(failures, [], `${failures.length} of ${count} panel expressions returned no data`);
  });

  it("a misspelled metric name returns no data (so the check above can fail)", async () => {
    const good = await prom.query("flux_room_joins_total");
    assert.ok(good.result.length > 0, "flux_room_joins_total itself returned nothing");
    const bad = await prom.query("flux_room_join_total");
    assert.equal(bad.result.length, 0);
  });

  it("every alert rule loads and evaluates without error", async () => {
    const { groups } = await prom.api("/api/v1/rules");
    const loaded = groups.flatMap((g) => g.rules);
    const expected = rules.groups.flatMap((g) => g.rules).map((r) => r.alert ?? r.record);
    assert.deepEqual(loaded.map((r) => r.name).sort(), [...expected].sort(), "rules loaded by Prometheus");
    const broken = loaded.filter((r) => r.health !== "ok" || r.lastError);
    assert.deepEqual(broken.map((r) => `${r.name}: ${r.health} ${r.lastError ?? ""}`), [], "rules that do not evaluate");
    const firing = loaded.filter((r) => r.type === "alerting" && r.state !== "inactive");
    log(`rules: ${loaded.length} evaluated without error; pending or firing: ${firing.map((r) => `${r.name} (${r.state})`).join(", ") || "none"}`);
  });

  it("every metric the rules and the dashboard name exists", async () => {
    const present = new Set(await prom.api("/api/v1/label/__name__/values"));
    const exprs = [
      ...rules.groups.flatMap((g) => g.rules).map((r) => [`rule ${r.alert ?? r.record}`, r.expr]),
      ...dashboardPanels(dashboard).flatMap((p) => p.targets.map((t) => [`panel "${p.title}"`, t.expr])),
      ...dashboard.templating.list.filter((t) => t.type === "query").map((v) => [`variable ${v.name}`, v.definition]),
    ];
    const missing = new Map();
    for (const [where, expr] of exprs) {
      for (const name of metricNames(expr)) {
        if (!present.has(name)) missing.set(name, [...(missing.get(name) ?? []), where]);
      }
    }
    const list = [...missing].map(([name, where]) => `${name} (${[...new Set(where)].join(", ")})`);
    for (const line of list) log(`missing metric: ${line}`);
    assert.deepEqual(list, [], "metrics named by the rules or the dashboard that flux-bff does not expose");
  });
});
