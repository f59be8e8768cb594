#!/usr/bin/env node
// The seeded chaos soak of issue 19: faults on faults under live traffic, and an invariant
// checked on every event a client receives.
//
// It runs Apache Kafka 4.1 (scripts/kafka.sh; data kept across broker restarts), redis-server,
// two flux-bff replicas in Kafka mode (shared recovery secret, Valkey configured, JSON logs)
// behind a TCP proxy it controls, Kafka console producers of tickers (one stream per product,
// keyed by product), news and stocks, each record numbered in a payload field the gateway
// forwards unchanged, and N clients connecting as the Flux frontend does (websocket,
// auth.guestId, userLocationUpdate on every connect and every few seconds with a new city,
// reconnection on with socket.io-client's defaults). A schedule drawn from the seed
// (schedule.mjs: same seed, same schedule) injects every few seconds one or two faults:
// broker SIGTERM or SIGKILL and restart, Valkey killed and restarted, one replica SIGKILL or
// SIGTERM (a rolling deploy's step) and restart, every connection cut for 1-5 s, clients
// moved to the other replica, a partition added to an event topic, a client that stops
// reading. At the end it reads every topic back with Kafka's console consumer and checks
// (invariants.mjs): each client got every number of its rooms exactly once and in order, but
// for the documented, counted exceptions; every command the gateway accepted landed, once
// per idempotency key; no panic or error line in any gateway log; each replica's RSS under a
// bound; every replica ready again (/readyz 200) after every fault. A violation prints the
// seed and the fault timeline, and the exit code is 1.
//
// Why the official socket.io-client and not flux-loadgen's lean Rust client: it is the
// frontend's own client, so what is proven is what the dashboard gets, with its reconnection
// back-off, its buffering and its connection-state recovery (pid, offset) exactly as shipped.
// A hand-written client would prove the gateway against our own reading of the protocol, and
// at this scale (tens of clients, tens of events a second) Node's cost does not matter.
//
// Usage: node tests/node/chaos/driver.mjs [--seed N] [--duration S] [--clients N]
//          [--rss-limit MB] [--recovery-window 2m] [--conflate-after 1h] [--out DIR]
//          [--print-schedule] [--quiet]
// Binary: FLUX_BFF_BIN or <repo>/target/debug/flux-bff. Needs java, the broker's jars
// (bash scripts/kafka.sh fetch) and redis-server.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";

import { startKafka, startProducer } from "../support/kafka.mjs";
import { startProxy } from "../support/proxy.mjs";
import { startRedis } from "../support/redis.mjs";
import { binary, fixture, freePort, repo, settleAll, sleep, startServer } from "../support/server.mjs";
import { scrape as scrapeMetrics, sumBy } from "../support/metrics.mjs";
import { asRanges, checkClient, checkCommands, isTickerStream, offsetTime, scanLog, streamOf } from "./invariants.mjs";
import { CHAOS_TOPICS, FAULT_KINDS, describeFault, makeSchedule, prng, scheduleDigest } from "./schedule.mjs";

export const DEFAULTS = {
  seed: 1,
  durationS: 90,
  clients: 8,
  products: ["BTC-USD", "ETH-USD", "SOL-USD"],
  /** Each product ticks this often; news and stocks come at their own pace. */
  tickMs: 200,
  newsMs: 1_000,
  stocksMs: 1_000,
  /** Each client sends a new location this often (seeded within the range). */
  locationMs: [4_000, 8_000],
  rssLimitMb: 256,
  readyTimeoutMs: 60_000,
  settleTimeoutMs: 60_000,
  recoveryWindow: "2m",
  /**
   * socketio.conflate_after. A consumer that is behind (the producers' backlog after a broker
   * outage arrives faster than a debug build fans it out) skips tickers superseded in its
   * batch, for every client, by design; that is load shedding, not recovery, and it would make
   * every ticker gap after an outage ambiguous. The soak turns it off unless told otherwise
   * (--conflate-after 50ms: the default; gaps it explains are counted as consumer_conflated).
   */
  conflateAfter: "1h",
  /** SIGTERM must end the process within lifecycle.shutdown_deadline (10 s) and this much. */
  shutdownSlackMs: 2_000,
  out: null,
  quiet: false,
};

const [TICKER_TOPIC, NEWS_TOPIC, STOCK_TOPIC] = CHAOS_TOPICS;
const EVENT_TOPICS = [
  "weather.service.event.updated",
  "crypto.movers.event.updated",
  "crypto.topcoins.event.updated",
  ...CHAOS_TOPICS,
];
const COMMAND_TOPICS = {
  cryptotopcoins: "crypto.service.command.topcoins.refresh",
  cryptotopmovers: "crypto.service.command.topmovers.refresh",
  stocktopperformers: "stock.service.command.topperformers.refresh",
  topglobalnews: "news.service.command.refresh",
};
const WEATHER_COMMANDS = "weather.service.command.fetch";
const SNAPSHOT_EVENTS = new Set(["newsUpdate", "stockTopPerformersResponse", "cryptoTopMoversResponse", "cryptoTopCoinsResponse"]);
const SECRET = "flux-chaos-soak-recovery-secret-0123456789";

/** Runs one soak; resolves with its summary ({violations: [...], ...}). */
export async function runChaos(options = {}) {
  const o = { ...DEFAULTS, ...options };
  const durationMs = o.durationS * 1000;
  const recoveryOff = /^0+(ms|s|m)?$/.test(String(o.recoveryWindow));
  const out = o.out ?? path.join(repo, "target", "chaos", `seed-${o.seed}${recoveryOff ? "-recovery-off" : ""}`);
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  const t0 = Date.now();
  const now = () => Date.now();
  const timeline = [];
  const violations = [];
  const secs = (t) => ((t - t0) / 1000).toFixed(3).padStart(8);
  const note = (what, { quiet = false } = {}) => {
    timeline.push({ t: now() - t0, what });
    if (!quiet && !o.quiet) console.log(`[${secs(now())}s] ${what}`);
  };
  const violate = (what) => {
    violations.push(what);
    note(`VIOLATION ${what}`);
  };

  const schedule = makeSchedule(o.seed, { durationMs, clients: o.clients });
  const digest = scheduleDigest(schedule);
  console.log(`chaos: seed ${o.seed}, ${o.durationS} s, ${o.clients} clients, ${schedule.length} faults (schedule ${digest}), recovery window ${o.recoveryWindow}, conflate_after ${o.conflateAfter}, binary ${binary}, output ${out}`);
  for (const f of schedule) console.log(`  at ${(f.at / 1000).toFixed(1).padStart(6)} s  ${describeFault(f)}`);

  const rng = prng(`clients:${o.seed}`);
  const cleanup = [];
  let kafka;
  let redis;
  let proxy;
  const replicas = [];
  const clients = [];
  const producers = {};
  const timers = new Set();
  let activeFaults = 0;
  let stopping = false;
  // One fault (or restart) at a time per resource: broker, valkey, replica<i>, proxy, client<i>.
  const locks = new Map();
  async function withLock(name, fn) {
    const prev = locks.get(name) ?? Promise.resolve();
    let release;
    const mine = new Promise((resolve) => (release = resolve));
    locks.set(name, prev.then(() => mine));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
  let cleaned = null;
  const runCleanup = () =>
    (cleaned ??= (async () => {
      stopping = true;
      for (const h of timers) clearInterval(h);
      for (const fn of cleanup.reverse()) {
        try {
          await fn();
        } catch {
          // best effort
        }
      }
    })());
  // Ctrl-C or a CI timeout: stop the broker, redis-server and the replicas, not only node.
  const onSignal = (signal) => {
    console.log(`\nchaos: ${signal}: stopping every process it started (seed ${o.seed})`);
    runCleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    // --- infrastructure --------------------------------------------------------------------
    kafka = await startKafka();
    cleanup.push(() => kafka.stop());
    // The broker stamps each record when it appends it: the earliest a gateway can emit it,
    // whatever the producer's queue held during an outage (invariants.mjs times exceptions by it).
    await Promise.all(EVENT_TOPICS.map((t) => kafka.createTopic(t, 1, ["message.timestamp.type=LogAppendTime"])));
    redis = await startRedis();
    cleanup.push(() => redis.stop());
    note(`kafka on ${kafka.address}, redis-server on ${redis.port}`);

    for (const [i, name] of ["bff-a", "bff-b"].entries()) {
      replicas.push({ i, name, port: await freePort(), server: null, incarnation: 0, expectExit: false, ready: false, processes: [] });
    }
    const replicaEnv = (r) => ({
      FLUX_KAFKA__BROKERS: `["${kafka.address}"]`,
      FLUX_KAFKA__CLIENT_ID: r.name,
      FLUX_VALKEY__URL: redis.url,
      FLUX_SOCKETIO__RECOVERY_SECRET: SECRET,
      FLUX_SOCKETIO__RECOVERY_WINDOW: o.recoveryWindow,
      FLUX_SOCKETIO__CONFLATE_AFTER: o.conflateAfter,
      FLUX_LOG__FORMAT: "json",
      FLUX_LOG__LEVEL: process.env.FLUX_CHAOS_LOG_LEVEL ?? "info",
    });
    async function startReplica(r) {
      r.incarnation += 1;
      const logFile = path.join(out, `${r.name}-${r.incarnation}.log`);
      const proc = { incarnation: r.incarnation, logFile, metrics: {}, rssMaxKb: 0, pid: null, exit: null };
      r.processes.push(proc);
      const t = now();
      r.expectExit = false;
      const server = await startServer(replicaEnv(r), { port: r.port, logFile });
      proc.pid = server.pid;
      r.server = server;
      server.exited.then((exit) => {
        proc.exit = exit;
        r.ready = false;
        if (r.expectExit || stopping) return;
        // D17: Kafka unreachable for the whole start-up deadline is exit 1 by design; any other
        // exit nobody asked for is a violation. Either way the driver starts it again, as an
        // orchestrator would, so that the run goes on.
        const tail = server.logs().slice(-2_000);
        if (exit.code === 1 && /Kafka unreachable/.test(tail)) note(`${r.name} (process ${proc.incarnation}) exited 1: Kafka unreachable for the start-up deadline (D17); starting it again`);
        else violate(`${r.name} (process ${proc.incarnation}) exited unexpectedly: ${JSON.stringify(exit)}; log ${logFile}`);
        withLock(`replica${r.i}`, async () => {
          if (stopping || r.server !== server) return;
          note(`${r.name} started again after its exit (${await startReplica(r)} ms)`);
        }).catch((e) => violate(`${r.name} could not be started again: ${e.message}`));
      });
      return now() - t;
    }
    // Registered before the replicas start (startReplica sets r.server as soon as one is up),
    // so that a replica that fails to start does not leave the other running.
    cleanup.push(async () => {
      stopping = true;
      for (const r of replicas) await r.server?.kill("SIGKILL");
    });
    await settleAll(replicas.map(startReplica));
    proxy = await startProxy(replicas.map((r) => r.port));
    cleanup.push(() => proxy.close());
    note(`replicas ${replicas.map((r) => `${r.name} on ${r.port}`).join(", ")}; proxy on ${proxy.port}`);

    // --- readiness, metrics, RSS -----------------------------------------------------------
    async function probeReady(r) {
      if (!r.server || r.server.exitInfo()) return (r.ready = false);
      try {
        const res = await fetch(`${r.server.url}/readyz`, { signal: AbortSignal.timeout(1_000) });
        await res.arrayBuffer();
        r.ready = res.ok;
      } catch {
        r.ready = false;
      }
      return r.ready;
    }
    async function waitAllReady(timeoutMs) {
      const t = now();
      for (;;) {
        const ok = await Promise.all(replicas.map(probeReady));
        if (ok.every(Boolean)) return now() - t;
        if (now() - t > timeoutMs) return null;
        await sleep(100);
      }
    }
    const consumerConflations = [];
    async function scrape(r) {
      const proc = r.processes.at(-1);
      if (!proc || proc.exit || !r.server) return null;
      try {
        const parsed = await scrapeMetrics(r.server, { timeout: 2_000 });
        const before = sumBy(proc.metrics, "flux_events_conflated_total")[""] ?? 0;
        const after = sumBy(parsed, "flux_events_conflated_total")[""] ?? 0;
        if (after > before) consumerConflations.push({ at: now(), delta: after - before, replica: r.name, port: r.port });
        if (!proc.exit) proc.metrics = parsed;
        return parsed;
      } catch {
        return null;
      }
    }
    function sampleRss(r) {
      const proc = r.processes.at(-1);
      if (!proc?.pid || proc.exit) return;
      try {
        const m = fs.readFileSync(`/proc/${proc.pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
        if (m && Number(m[1]) > proc.rssMaxKb) {
          proc.rssMaxKb = Number(m[1]);
          proc.rssMaxAt = now() - t0;
          proc.journalAtRssMax = sumBy(proc.metrics, "flux_recovery_journal_events")[""] ?? null;
          proc.socketsAtRssMax = sumBy(proc.metrics, "flux_sockets_connected")[""] ?? null;
        }
      } catch {
        // gone meanwhile
      }
    }
    const every = (ms, fn) => {
      const h = setInterval(fn, ms);
      timers.add(h);
    };
    every(1_000, () => {
      for (const r of replicas) {
        sampleRss(r);
        scrape(r);
      }
    });
    const total = (name, label = null) => {
      const sum = {};
      for (const r of replicas) {
        for (const p of r.processes) {
          for (const [k, v] of Object.entries(sumBy(p.metrics, name, label))) sum[k] = (sum[k] ?? 0) + v;
        }
      }
      return sum;
    };

    let readyMs = await waitAllReady(o.readyTimeoutMs);
    if (readyMs === null) throw new Error(`replicas not ready within ${o.readyTimeoutMs} ms at start-up:\n${replicas.map((r) => r.server.logs()).join("\n")}`);
    note(`replicas ready`);

    // --- producers -------------------------------------------------------------------------
    const producerOptions = {
      keyed: true,
      producerProps: ["acks=all", "enable.idempotence=true", "delivery.timeout.ms=120000", "max.block.ms=120000"],
      args: ["--request-required-acks", "all", "--message-send-max-retries", "2147483647", "--request-timeout-ms", "5000", "--metadata-expiry-ms", "2000", "--max-block-ms", "120000"],
    };
    async function openProducer(topic) {
      producers[topic] = { p: null, restarting: true, restarts: (producers[topic]?.restarts ?? -1) + 1 };
      producers[topic].p = await startProducer(kafka, topic, producerOptions);
      producers[topic].restarting = false;
    }
    // openProducer sets producers[topic].p as soon as one is up; stopping one already stopped
    // (the settle phase below) returns at once.
    cleanup.push(() => Promise.all(Object.values(producers).map((slot) => slot.p?.stop())));
    await settleAll([TICKER_TOPIC, NEWS_TOPIC, STOCK_TOPIC].map(openProducer));
    const seqs = {};
    const sendAt = {};
    const tickerTemplate = fixture("crypto.ticker.event.updated.json");
    const newsTemplate = fixture("news.service.event.updated.json");
    newsTemplate.payload.data = newsTemplate.payload.data.slice(0, 2);
    const stockTemplate = fixture("stock.service.event.updated.json");
    stockTemplate.data.topGainers = stockTemplate.data.topGainers.slice(0, 3);
    stockTemplate.data.topLosers = stockTemplate.data.topLosers.slice(0, 3);
    function produce(topic, stream, key, make) {
      const slot = producers[topic];
      if (slot.restarting) return;
      if (slot.p.exited()) {
        note(`producer of ${topic} exited (${JSON.stringify(slot.p.exited())}); starting another:\n${slot.p.output()}`);
        openProducer(topic).catch((e) => violate(`producer of ${topic} could not be restarted: ${e.message}`));
        return;
      }
      const seq = (seqs[stream] ?? 0) + 1;
      const record = make(seq);
      try {
        slot.p.send(record, key);
      } catch {
        return; // it exited between the check and the write: the next tick restarts it
      }
      seqs[stream] = seq;
      (sendAt[stream] ??= new Map()).set(seq, now());
    }
    every(o.tickMs, () => {
      for (const product of o.products) {
        produce(TICKER_TOPIC, `ticker:${product}`, product, (seq) => {
          const t = structuredClone(tickerTemplate);
          t.ts = now();
          t.data.product_id = product;
          t.data.sequence = seq;
          t.data.price = (1000 + seq / 100).toFixed(2);
          return t;
        });
      }
    });
    every(o.newsMs, () =>
      produce(NEWS_TOPIC, "news", "global", (seq) => {
        const n = structuredClone(newsTemplate);
        n.payload.data[0].id = `seq-${seq}`;
        n.timestamp = now();
        return n;
      }),
    );
    every(o.stocksMs, () =>
      produce(STOCK_TOPIC, "stocks", "global", (seq) => {
        const s = structuredClone(stockTemplate);
        s.data.meta.sequence = seq;
        s.data.timestamp = new Date().toISOString();
        return s;
      }),
    );

    // --- clients ---------------------------------------------------------------------------
    let onlineReports = 0;
    const refusalQueue = new Map(); // replica port -> promise chain
    function attributeRefusal(c, connect) {
      const r = replicas.find((x) => x.port === connect.replica);
      if (!r) {
        connect.reason = "unattributed";
        return;
      }
      const chain = (refusalQueue.get(r.port) ?? Promise.resolve()).then(async () => {
        for (let attempt = 0; attempt < 3; attempt++) {
          const m = await scrape(r);
          const proc = r.processes.at(-1);
          if (m && proc) {
            proc.attributed ??= {};
            const reasons = sumBy(m, "flux_recovery_refused_total", "reason");
            const surplus = Object.keys(reasons).find((k) => reasons[k] > (proc.attributed[k] ?? 0));
            if (surplus) {
              proc.attributed[surplus] = (proc.attributed[surplus] ?? 0) + 1;
              connect.reason = surplus;
              note(`${c.name}: recovery refused on ${r.name}: ${surplus}`);
              return;
            }
          }
          await sleep(300);
        }
        connect.reason = "unattributed";
        note(`${c.name}: recovery refused on ${r.name}, reason not found in its metrics`);
      });
      refusalQueue.set(r.port, chain);
    }
    // A recovered connect whose replay the gateway then refused (Recovery::resume failed after
    // the handshake admitted it): the client has recovered=true and its pid, the gateway counts
    // a refusal. Looked for half a second after the connect, on the replica it went to.
    function checkReplay(c, connect) {
      const r = replicas.find((x) => x.port === connect.replica);
      if (!r) return;
      // Queued half a second later: a refusal a client saw meanwhile is attributed first.
      setTimeout(() => queueReplayCheck(c, r, connect), 500);
    }
    function queueReplayCheck(c, r, connect) {
      const chain = (refusalQueue.get(r.port) ?? Promise.resolve()).then(async () => {
        const m = await scrape(r);
        const proc = r.processes.at(-1);
        if (!m || !proc) return;
        proc.attributed ??= {};
        const reasons = sumBy(m, "flux_recovery_refused_total", "reason");
        const surplus = Object.keys(reasons).find((k) => reasons[k] > (proc.attributed[k] ?? 0));
        if (surplus) {
          proc.attributed[surplus] = (proc.attributed[surplus] ?? 0) + 1;
          connect.replayRefused = surplus;
          note(`${c.name}: recovered on ${r.name} (connect #${c.connects.indexOf(connect) + 1}); a refusal (${surplus}) no client saw was counted there meanwhile: a handshake on a connection that died, or this replay refused after admission`);
        }
      });
      refusalQueue.set(r.port, chain);
    }
    function sendLocation(c) {
      if (!c.socket.connected) return;
      c.cityN += 1;
      const city = `Chaos ${c.name} ${c.cityN}`;
      c.socket.emit("userLocationUpdate", { city, region: "Chaos Region", country: "IN", lat: 18.5196, lon: 73.8553, ip: "203.0.113.7" });
      c.updates.push({ userId: c.userId, city, at: now(), duringFault: activeFaults > 0 });
    }
    function makeClient(i) {
      const name = `c${i}`;
      const c = { i, name, userId: rng.uuid(), connects: [], disconnects: [], stalls: [], streams: {}, firstAt: {}, roomAt: {}, updates: [], cityN: 0, lastPid: null, last: {}, seen: {} };
      c.socket = io(proxy.url, {
        path: "/socket.io",
        transports: ["websocket"],
        auth: { guestId: c.userId },
        query: { chaos: name },
        forceNew: true,
        reconnection: true,
      });
      c.socket.on("connect", () => {
        const connect = { at: now(), recovered: c.socket.recovered === true, attempted: c.lastPid != null, replica: proxy.where(name) };
        c.connects.push(connect);
        c.lastPid = c.socket._pid ?? null;
        if (connect.attempted && !connect.recovered) attributeRefusal(c, connect);
        if (connect.recovered) checkReplay(c, connect);
        sendLocation(c);
      });
      c.socket.on("disconnect", (reason) => c.disconnects.push({ at: now(), reason }));
      c.socket.on("connect_error", () => {});
      c.socket.onAny((event, ...args) => {
        const at = now();
        const conn = c.connects.length - 1;
        const room = args.length === 2 && typeof args[1] === "string";
        const s = streamOf(event, args[0]);
        if (room || SNAPSHOT_EVENTS.has(event)) c.firstAt[conn] ??= at;
        if (room) c.roomAt[conn] ??= at;
        if (!s || !(room || (recoveryOff && isTickerStream(s.stream)))) return;
        (c.streams[s.stream] ??= []).push({ seq: s.seq, at, conn, emitAt: room ? offsetTime(args[1]) : null });
        // The invariant on every event: nothing twice, nothing backwards, gaps noted.
        const seen = (c.seen[s.stream] ??= new Set());
        const last = c.last[s.stream];
        let problem = null;
        if (seen.has(s.seq)) problem = `${s.seq} received again`;
        else if (last !== undefined && s.seq < last) problem = `${s.seq} after ${last}`;
        else if (last !== undefined && s.seq > last + 1) c.gaps = (c.gaps ?? 0) + 1;
        seen.add(s.seq);
        if (last === undefined || s.seq > last) c.last[s.stream] = s.seq;
        if (problem && onlineReports++ < 30) note(`${name} ${s.stream}: ${problem} (connection #${conn + 1}${c.stalls.length ? ", stalled before" : ""})`);
      });
      const period = rng.int(o.locationMs[0], o.locationMs[1]);
      every(period, () => sendLocation(c));
      c.stall = async (ms) => {
        const ws = c.socket.io.engine?.transport?.ws;
        const stall = { from: now(), to: null };
        c.stalls.push(stall);
        ws?.pause?.();
        await sleep(ms);
        ws?.resume?.();
        stall.to = now();
      };
      return c;
    }
    for (let i = 0; i < o.clients; i++) clients.push(makeClient(i));
    cleanup.push(() => clients.forEach((c) => c.socket.disconnect()));
    // With recovery off, room events carry no offset: news and stocks from a room cannot be
    // told from hydration, and only tickers (never hydrated, D3) are checked.
    const checkedStreams = [...o.products.map((p) => `ticker:${p}`), ...(recoveryOff ? [] : ["news", "stocks"])];
    const firstEvents = now();
    const incomplete = () => clients.filter((c) => checkedStreams.some((s) => !c.streams[s]));
    while (incomplete().length) {
      if (now() - firstEvents > 30_000) throw new Error(`clients without events of every stream 30 s after start: ${incomplete().map((c) => `${c.name}: ${Object.keys(c.streams)}`).join("; ")}`);
      await sleep(100);
    }
    note(`${clients.length} clients connected and receiving every stream (spread ${JSON.stringify(proxy.stats.perTarget)})`);

    // --- faults ----------------------------------------------------------------------------
    const lockOf = (f) =>
      ({ broker_term: "broker", broker_kill: "broker", add_partition: "broker", valkey_kill: "valkey", replica_kill: `replica${f.replica}`, replica_term: `replica${f.replica}`, proxy_cut: "proxy", move_clients: "proxy", stall_client: `client${f.client}` })[f.kind];
    const startAt = now();
    async function inject(f) {
      const wait = startAt + f.at - now();
      if (wait > 0) await sleep(wait);
      f.scheduledAt = startAt + f.at;
      await withLock(lockOf(f), async () => {
        const late = now() - f.scheduledAt;
        activeFaults += 1;
        f.injectedAt = now();
        note(`inject ${describeFault(f)}${late > 500 ? ` (${late} ms late: waited for ${lockOf(f)})` : ""}`);
        switch (f.kind) {
          case "broker_term":
          case "broker_kill": {
            const ms = await kafka.kill(f.kind === "broker_term" ? "SIGTERM" : "SIGKILL");
            f.detail = `broker stopped in ${ms} ms`;
            await sleep(f.downMs);
            f.detail += `, started again in ${await kafka.start()} ms`;
            break;
          }
          case "valkey_kill":
            await redis.kill();
            await sleep(f.downMs);
            f.detail = `redis-server started again in ${await redis.start()} ms`;
            break;
          case "replica_kill":
          case "replica_term": {
            const r = replicas[f.replica];
            await scrape(r);
            sampleRss(r);
            r.expectExit = true;
            const t = now();
            const exit = await r.server.kill(f.kind === "replica_kill" ? "SIGKILL" : "SIGTERM", 30_000);
            const took = now() - t;
            f.detail = `${r.name} exited ${JSON.stringify({ code: exit.code, signal: exit.signal })} in ${took} ms`;
            if (f.kind === "replica_term") {
              f.shutdownMs = took;
              if (exit.code !== 0) violate(`${r.name} exited ${JSON.stringify(exit)} after SIGTERM (fault #${f.id}; log ${r.processes.at(-1).logFile})`);
              if (took > 10_000 + o.shutdownSlackMs) violate(`${r.name} took ${took} ms to stop after SIGTERM (deadline 10 s; fault #${f.id})`);
            }
            await sleep(f.downMs);
            f.detail += `, started again in ${await startReplica(r)} ms`;
            break;
          }
          case "proxy_cut":
            await proxy.cut(f.ms);
            break;
          case "move_clients": {
            const moved = [];
            for (const ci of f.clients) {
              const c = clients[ci];
              const here = proxy.where(c.name);
              const other = replicas.find((r) => r.port !== here) ?? replicas[0];
              proxy.route(c.name, other.port);
              proxy.drop(c.name);
              moved.push(`${c.name}->${other.name}`);
            }
            f.detail = moved.join(" ");
            break;
          }
          case "add_partition": {
            for (let attempt = 1; ; attempt++) {
              try {
                await kafka.alterPartitions(f.topic, f.partitions);
                break;
              } catch (e) {
                if (attempt >= 5) throw e;
                await sleep(1_000);
              }
            }
            break;
          }
          case "stall_client":
            await clients[f.client].stall(f.ms);
            break;
          default:
            throw new Error(`unknown fault ${f.kind}`);
        }
        f.restoredAt = now();
        note(`restored #${f.id} ${f.kind} after ${f.restoredAt - f.injectedAt} ms${f.detail ? `: ${f.detail}` : ""}`);
      });
      const ready = await waitAllReady(o.readyTimeoutMs);
      activeFaults -= 1;
      f.readyMs = ready;
      // Another fault that began before this one's replicas were ready lengthens its wait.
      f.overlapped = schedule.filter((g) => g !== f && g.injectedAt && g.injectedAt <= now() && (g.restoredAt ?? Infinity) >= f.injectedAt).map((g) => g.id);
      if (ready === null) violate(`replicas not all ready ${o.readyTimeoutMs} ms after fault #${f.id} ${f.kind} was over (${replicas.map((r) => `${r.name} ready=${r.ready}`).join(", ")})`);
      else note(`#${f.id} ${f.kind}: every replica ready ${ready} ms after the fault was over`, { quiet: ready < 1_000 });
    }
    const running = schedule.map((f) =>
      inject(f).catch((e) => {
        activeFaults = Math.max(0, activeFaults - 1);
        violate(`fault #${f.id} ${f.kind} could not be injected: ${e.message}`);
      }),
    );
    await sleep(durationMs - (now() - startAt));
    await Promise.all(running);
    note("faults over: settling");

    // --- settle ----------------------------------------------------------------------------
    readyMs = await waitAllReady(o.readyTimeoutMs);
    if (readyMs === null) violate(`replicas not ready at the end`);
    for (const h of timers) clearInterval(h);
    timers.clear();
    // Streams stop; every client must get the last number of every stream.
    const stopped = await Promise.all(Object.entries(producers).map(async ([topic, slot]) => [topic, await slot.p.stop(130_000)]));
    note(`producers stopped: ${stopped.map(([t, e]) => `${t} ${JSON.stringify(e)}`).join(", ")}`);
    const settleFrom = now();
    const behind = () =>
      clients.flatMap((c) => Object.entries(seqs).filter(([stream, last]) => checkedStreams.includes(stream) && (c.last[stream] ?? 0) < last).map(([stream, last]) => `${c.name} ${stream} at ${c.last[stream] ?? "none"} of ${last}${c.socket.connected ? "" : " (disconnected)"}`));
    while (behind().length > 0 && now() - settleFrom < o.settleTimeoutMs) await sleep(200);
    const late = behind();
    note(late.length === 0 ? `every client has the last number of every stream (${now() - settleFrom} ms)` : `after ${o.settleTimeoutMs} ms, clients without the last number: ${late.join("; ")}`);
    for (const r of replicas) {
      sampleRss(r);
      await scrape(r);
    }
    for (const c of clients) c.socket.disconnect();
    await sleep(500);
    for (const r of replicas) await scrape(r);
    // Final shutdown: SIGTERM, exit 0 within the deadline, no panic (checked with the logs).
    stopping = true;
    const finals = await Promise.all(
      replicas.map(async (r) => {
        r.expectExit = true;
        const t = now();
        const exit = await r.server.kill("SIGTERM", 30_000);
        return { r, exit, ms: now() - t };
      }),
    );
    for (const { r, exit, ms } of finals) {
      if (exit.code !== 0) violate(`${r.name} exited ${JSON.stringify(exit)} after the final SIGTERM`);
      if (ms > 10_000 + o.shutdownSlackMs) violate(`${r.name} took ${ms} ms to stop after the final SIGTERM`);
    }

    // --- the log, read back --------------------------------------------------------------
    const [eventRecords, commandRecords] = await Promise.all([
      kafka.consume(CHAOS_TOPICS.map((t) => t.replaceAll(".", "\\.")).join("|")),
      kafka.consume(`${WEATHER_COMMANDS.replaceAll(".", "\\.")}|.*\\.command\\..*refresh`),
    ]);
    const truth = {};
    const appendAt = {};
    const partitionOf = {};
    const logAnomalies = [];
    const perPartition = new Map();
    for (const rec of eventRecords) {
      let v;
      try {
        v = JSON.parse(rec.value);
      } catch {
        logAnomalies.push(`unparsable record at partition ${rec.partition} offset ${rec.offset}`);
        continue;
      }
      let s = null;
      if (v?.data?.type === "ticker") s = { stream: `ticker:${v.data.product_id}`, seq: v.data.sequence };
      else if (v?.payload?.data) s = { stream: "news", seq: Number(String(v.payload.data[0]?.id).replace("seq-", "")) };
      else if (v?.data?.meta) s = { stream: "stocks", seq: v.data.meta.sequence };
      if (!s || !Number.isInteger(s.seq)) continue;
      const m = (truth[s.stream] ??= new Map());
      m.set(s.seq, (m.get(s.seq) ?? 0) + 1);
      (partitionOf[s.stream] ??= new Map()).set(s.seq, rec.partition);
      const a = (appendAt[s.stream] ??= new Map());
      a.set(s.seq, Math.min(a.get(s.seq) ?? Infinity, rec.timestamp));
      const k = `${s.stream}/${rec.partition}`;
      const list = perPartition.get(k) ?? [];
      list.push(rec.offset * 1e9 + s.seq);
      perPartition.set(k, list);
    }
    for (const [k, list] of perPartition) {
      const bySeq = list.sort((a, b) => a - b).map((x) => x % 1e9);
      for (let i = 1; i < bySeq.length; i++) if (bySeq[i] <= bySeq[i - 1]) logAnomalies.push(`${k}: ${bySeq[i]} after ${bySeq[i - 1]} in the log`);
    }
    const logDuplicates = Object.entries(truth).flatMap(([s, m]) => [...m].filter(([, n]) => n > 1).map(([seq, n]) => `${s}#${seq}x${n}`));
    const sentTotal = Object.values(sendAt).reduce((n, m) => n + m.size, 0);
    const loggedTotal = Object.values(truth).reduce((n, m) => n + [...m.values()].reduce((a, b) => a + b, 0), 0);
    note(`log: ${loggedTotal} numbered records of ${sentTotal} written to the producers; ${logDuplicates.length} numbers twice in the log; ${logAnomalies.length} order anomalies`);

    // --- invariants ------------------------------------------------------------------------
    const gateway = {
      recoveryConflated: total("flux_recovery_conflated_events_total")[""] ?? 0,
      laggingConflated: total("flux_fanout_conflated_total")[""] ?? 0,
      consumerConflations,
    };
    // Everything the checks read, for a second look without another run.
    const mapObj = (o) => Object.fromEntries(Object.entries(o).map(([k, m]) => [k, [...m]]));
    fs.writeFileSync(
      path.join(out, "raw.json"),
      JSON.stringify({
        t0,
        gateway,
        truth: mapObj(truth),
        sendAt: mapObj(sendAt),
        appendAt: mapObj(appendAt),
        partitionOf: mapObj(partitionOf),
        clients: clients.map((c) => ({ name: c.name, userId: c.userId, connects: c.connects, disconnects: c.disconnects, stalls: c.stalls, firstAt: c.firstAt, roomAt: c.roomAt, streams: c.streams })),
      }),
    );
    // The earliest each record could have been emitted: appended to the log, and not before
    // the driver wrote it.
    const emittable = {};
    for (const [stream, m] of Object.entries(sendAt)) {
      emittable[stream] = new Map([...m].map(([seq, t]) => [seq, Math.max(t, appendAt[stream]?.get(seq) ?? t)]));
    }
    const perClient = clients.map((c) => ({ c, r: checkClient(c, truth, emittable, gateway, partitionOf) }));
    const sum = (f) => perClient.reduce((n, { r }) => n + f(r), 0);
    const exceptions = {};
    for (const { r } of perClient) for (const [k, v] of Object.entries(r.exceptions)) exceptions[k] = (exceptions[k] ?? 0) + v;
    const findings = (kind) => perClient.flatMap(({ c, r }) => r[kind].map((x) => ({ client: c.name, ...x })));
    const lost = findings("lost");
    const duplicated = findings("duplicated");
    const outOfOrder = findings("outOfOrder");
    const foreign = findings("foreign");
    const show = (list) => {
      const r = asRanges(list);
      return `\n    ${r.slice(0, 25).join("\n    ")}${r.length > 25 ? `\n    ... (${r.length} ranges)` : ""}`;
    };
    if (lost.length) violate(`${lost.length} events lost: ${show(lost)}`);
    if (duplicated.length) violate(`${duplicated.length} events duplicated: ${show(duplicated)}`);
    if (outOfOrder.length) violate(`${outOfOrder.length} events out of order: ${show(outOfOrder)}`);
    if (foreign.length) violate(`${foreign.length} events not in the log: ${show(foreign)}`);
    if (logDuplicates.length) violate(`the producers wrote numbers twice into the log (not the gateway's doing, but the check cannot tell): ${logDuplicates.slice(0, 10).join(", ")}`);
    // Series exist at zero from start-up: only a count above zero is a rejection.
    const rejected = Object.fromEntries(
      Object.entries(total("flux_events_rejected_total", "reason")).filter(([, n]) => n > 0),
    );
    if (Object.keys(rejected).length) violate(`the gateway rejected soak records: ${JSON.stringify(rejected)}`);

    const produced = total("flux_commands_produced_total", "topic");
    const typed = commandRecords.map((rec) => {
      let topic = COMMAND_TOPICS[rec.key];
      if (!topic) {
        try {
          topic = JSON.parse(rec.value).event === "locationUpdate" ? WEATHER_COMMANDS : "unknown";
        } catch {
          topic = "unknown";
        }
      }
      return { ...rec, topic };
    });
    const commands = checkCommands(typed, produced, clients.flatMap((c) => c.updates));
    for (const v of commands.violations) violate(`commands: ${v}`);

    const brokerWindows = schedule
      .filter((f) => f.kind.startsWith("broker_") && f.injectedAt)
      .map((f) => [f.injectedAt - 2_000, (f.restoredAt ?? now()) + 15_000]);
    const brokerDown = (t) => brokerWindows.some(([a, b]) => t >= a && t <= b);
    const strict = process.env.FLUX_CHAOS_STRICT_LOGS === "1";
    const logs = { errors: [], known: {}, panics: [], warnings: {}, other: [] };
    for (const r of replicas) {
      for (const p of r.processes) {
        const s = scanLog(fs.readFileSync(p.logFile, "utf8"), { brokerDown, strict });
        for (const k of ["errors", "panics", "other"]) logs[k].push(...s[k].map((l) => `${r.name}-${p.incarnation}: ${l}`));
        for (const [m, n] of Object.entries(s.warnings)) logs.warnings[m] = (logs.warnings[m] ?? 0) + n;
        for (const [m, n] of Object.entries(s.known)) logs.known[m] = (logs.known[m] ?? 0) + n;
      }
    }
    if (logs.panics.length) violate(`${logs.panics.length} panics in gateway logs: ${logs.panics.slice(0, 5).join(" | ")}`);
    if (logs.errors.length) violate(`${logs.errors.length} error lines in gateway logs: ${logs.errors.slice(0, 5).join(" | ")}`);
    const rss = replicas.map((r) => ({ name: r.name, maxMb: Math.max(...r.processes.map((p) => p.rssMaxKb)) / 1024 }));
    for (const r of replicas) {
      for (const p of r.processes) {
        if (p.rssMaxKb / 1024 > o.rssLimitMb) violate(`${r.name} (process ${p.incarnation}) RSS reached ${(p.rssMaxKb / 1024).toFixed(1)} MB at ${((p.rssMaxAt ?? 0) / 1000).toFixed(1)} s (bound ${o.rssLimitMb} MB; journal ${p.journalAtRssMax ?? "?"} events, ${p.socketsAtRssMax ?? "?"} sockets at the scrape before)`);
      }
    }
    const unreconnected = clients.filter((c) => c.connects.length === 0);
    if (unreconnected.length) violate(`clients that never connected: ${unreconnected.map((c) => c.name)}`);

    // --- report ----------------------------------------------------------------------------
    const faultsByKind = Object.fromEntries(FAULT_KINDS.map((k) => [k, schedule.filter((f) => f.kind === k).length]));
    const worst = schedule.filter((f) => f.readyMs != null).sort((a, b) => b.readyMs - a.readyMs)[0];
    const alone = schedule.filter((f) => f.readyMs != null && f.overlapped.length === 0).sort((a, b) => b.readyMs - a.readyMs)[0];
    const readyByKind = {};
    for (const f of schedule) if (f.readyMs != null) readyByKind[f.kind] = Math.max(readyByKind[f.kind] ?? 0, f.readyMs);
    const reconnects = clients.reduce((n, c) => n + Math.max(0, c.connects.length - 1), 0);
    const clientRecovered = clients.reduce((n, c) => n + c.connects.filter((k) => k.recovered).length, 0);
    const clientRefused = clients.reduce((n, c) => n + c.connects.filter((k) => k.attempted && !k.recovered).length, 0);
    const summary = {
      seed: o.seed,
      durationS: o.durationS,
      clients: o.clients,
      recoveryWindow: o.recoveryWindow,
      conflateAfter: o.conflateAfter,
      binary,
      schedule: digest,
      faultsByKind,
      faults: schedule.length,
      eventsChecked: sum((r) => r.checked),
      eventsReceived: sum((r) => r.received),
      lost: lost.length,
      duplicated: duplicated.length,
      outOfOrder: outOfOrder.length,
      exceptions,
      reconnects,
      recoveredByClients: clientRecovered,
      refusedByClients: clientRefused,
      refusalsUnseen: Math.max(0, (total("flux_recovery_sessions_total", "outcome").refused ?? 0) - clientRefused),
      recovery: {
        sessions: total("flux_recovery_sessions_total", "outcome"),
        refusedByReason: total("flux_recovery_refused_total", "reason"),
        replayed: total("flux_recovery_replayed_events_total")[""] ?? 0,
        conflated: gateway.recoveryConflated,
      },
      conflation: { consumer: total("flux_events_conflated_total")[""] ?? 0, lagging: gateway.laggingConflated, slowDisconnects: total("flux_slow_socket_disconnects_total")[""] ?? 0 },
      offsetResets: total("flux_kafka_offset_resets_total", "topic"),
      worstReadyMs: worst?.readyMs ?? 0,
      worstReadyFault: worst ? `${describeFault(worst)}${worst.overlapped.length ? `, overlapped by #${worst.overlapped.join(",#")}` : ""}` : null,
      worstReadyAloneMs: alone?.readyMs ?? 0,
      worstReadyAloneFault: alone ? describeFault(alone) : null,
      readyByKind,
      shutdownsMs: schedule.filter((f) => f.shutdownMs != null).map((f) => f.shutdownMs),
      commands: { ...commands, violations: commands.violations.length },
      commandsFailed: total("flux_commands_failed_total", "topic"),
      commandsRefused: total("flux_commands_refused_total", "topic"),
      rssMaxMb: Object.fromEntries(rss.map((x) => [x.name, Number(x.maxMb.toFixed(1))])),
      processes: replicas.flatMap((r) =>
        r.processes.map((p) => ({
          name: `${r.name}-${p.incarnation}`,
          rssMaxMb: Number((p.rssMaxKb / 1024).toFixed(1)),
          rssMaxAtS: p.rssMaxAt != null ? Number((p.rssMaxAt / 1000).toFixed(1)) : null,
          journalAtRssMax: p.journalAtRssMax,
          socketsAtRssMax: p.socketsAtRssMax,
          exit: p.exit ? { code: p.exit.code, signal: p.exit.signal } : null,
        })),
      ),
      logs: { errors: logs.errors.length, knownErrors: logs.known, panics: logs.panics.length, warnings: logs.warnings, nonJson: logs.other.length },
      producedRecords: loggedTotal,
      violations,
      elapsedS: Math.round((now() - t0) / 1000),
    };
    fs.writeFileSync(path.join(out, "summary.json"), `${JSON.stringify(summary, null, 2)}\n`);
    fs.writeFileSync(path.join(out, "timeline.json"), `${JSON.stringify({ seed: o.seed, t0, schedule, timeline, consumerConflations, clients: clients.map((c) => ({ name: c.name, userId: c.userId, connects: c.connects, disconnects: c.disconnects, stalls: c.stalls })) }, null, 1)}\n`);
    printReport(summary, schedule, timeline, t0);
    return summary;
  } catch (e) {
    violations.push(`the soak could not run: ${e.stack ?? e}`);
    console.log(`\nchaos: seed ${o.seed}: the soak could not run: ${e.stack ?? e}`);
    printTimeline(schedule, timeline);
    return { seed: o.seed, violations, infrastructure: true };
  } finally {
    await runCleanup();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function printTimeline(schedule, timeline) {
  console.log("fault timeline (s since start):");
  for (const e of timeline) console.log(`  ${(e.t / 1000).toFixed(3).padStart(8)}  ${e.what.split("\n")[0]}`);
}

function printReport(s, schedule, timeline) {
  const row = (k, v) => console.log(`| ${k.padEnd(36)} | ${String(v).padEnd(60)} |`);
  const kv = (o) => Object.entries(o).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  if (s.violations.length) {
    console.log(`\nchaos: FAILED, seed ${s.seed} (schedule ${s.schedule}); replay with: node tests/node/chaos/driver.mjs --seed ${s.seed} --duration ${s.durationS} --clients ${s.clients}${s.recoveryWindow !== "2m" ? ` --recovery-window ${s.recoveryWindow}` : ""}`);
    for (const v of s.violations) console.log(`  violation: ${v.length > 4000 ? `${v.slice(0, 4000)}...` : v}`);
    printTimeline(schedule, timeline);
  }
  console.log(`\nchaos soak, seed ${s.seed}, ${s.durationS} s, ${s.clients} clients, recovery window ${s.recoveryWindow}:`);
  console.log(`| ${"".padEnd(36, "-")} | ${"".padEnd(60, "-")} |`);
  row("faults injected", `${s.faults}: ${kv(s.faultsByKind)}`);
  row("events checked (received)", `${s.eventsChecked} (${s.eventsReceived})`);
  row("lost", s.lost);
  row("duplicated", s.duplicated);
  row("out of order", s.outOfOrder);
  row("documented exceptions", kv(s.exceptions));
  row("reconnects: recovered / refused", `${s.reconnects}: ${s.recoveredByClients} / ${s.refusedByClients}`);
  row("recoveries refused by reason", kv(s.recovery.refusedByReason));
  row("refusals no client saw", `${s.refusalsUnseen} (a connection gone before its CONNECT reply, or a replay refused after the handshake admitted it: the client then has recovered=true and no replay)`);
  row("replayed, replay-conflated", `${s.recovery.replayed}, ${s.recovery.conflated}`);
  row("conflated: consumer, lagging", `${s.conflation.consumer}, ${s.conflation.lagging} (slow disconnects ${s.conflation.slowDisconnects})`);
  row("worst time to ready", `${s.worstReadyMs} ms (${s.worstReadyFault ?? "-"})`);
  row("worst time to ready, fault alone", `${s.worstReadyAloneMs} ms (${s.worstReadyAloneFault ?? "-"})`);
  row("worst time to ready by kind (ms)", kv(s.readyByKind));
  row("SIGTERM shutdowns (ms)", s.shutdownsMs.join(", ") || "none");
  const w = s.commands.topics[WEATHER_COMMANDS] ?? { accepted: 0, landed: 0, duplicatesByKey: 0 };
  row("weather commands accepted / landed", `${w.accepted} / ${w.landed} (same key twice: ${w.duplicatesByKey}); updates ${s.commands.updates}, ${s.commands.duringFaults} during faults, ${s.commands.landedDuringFaults} of those landed`);
  row("max RSS (MB)", kv(s.rssMaxMb));
  row("log: panics / errors / warnings", `${s.logs.panics} / ${s.logs.errors} / ${Object.values(s.logs.warnings).reduce((a, b) => a + b, 0)}`);
  row("known gateway error lines (bugs)", kv(s.logs.knownErrors));
  row("result", s.violations.length ? `FAILED (${s.violations.length} violations)` : "passed");
}

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => argv[++i];
    if (a === "--seed") o.seed = /^\d+$/.test(argv[i + 1]) ? Number(v()) : v();
    else if (a === "--duration") o.durationS = Number(v());
    else if (a === "--clients") o.clients = Number(v());
    else if (a === "--rss-limit") o.rssLimitMb = Number(v());
    else if (a === "--recovery-window") o.recoveryWindow = v();
    else if (a === "--conflate-after") o.conflateAfter = v();
    else if (a === "--out") o.out = path.resolve(v());
    else if (a === "--print-schedule") o.printSchedule = true;
    else if (a === "--quiet") o.quiet = true;
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = parseArgs(process.argv.slice(2));
  if (args.printSchedule) {
    const o = { ...DEFAULTS, ...args };
    const s = makeSchedule(o.seed, { durationMs: o.durationS * 1000, clients: o.clients });
    console.log(`seed ${o.seed}: ${s.length} faults, schedule ${scheduleDigest(s)}`);
    for (const f of s) console.log(`  at ${(f.at / 1000).toFixed(1).padStart(6)} s  ${describeFault(f)}`);
    process.exit(0);
  }
  const summary = await runChaos(args);
  process.exit(summary.violations.length ? 1 : 0);
}
