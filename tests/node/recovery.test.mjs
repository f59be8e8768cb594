// Socket.IO connection-state recovery backed by Kafka offsets, played with the official
// socket.io-client (reconnection on, as the real frontend) against flux-bff in Kafka mode:
// one Apache Kafka 4.1 broker for the file (scripts/kafka.sh), a console producer streaming
// tickers at 10/s with a sequence number as their price, gateways behind a TCP proxy that
// cuts connections and moves them between replicas.
// - a blip of 5 s on one replica: recovered, every missed ticker replayed once, in order;
// - the same across two replicas sharing the secret;
// - a restart of the only replica: the new process reads its window back from Kafka;
// - refusals: a forged pid, an expired token, an offset outside the window: a normal
//   connection, and live tickers again after userLocationUpdate;
// - a rolling restart of two replicas under 10 clients: nothing lost, nothing twice.
// Needs java and the broker's jars (bash scripts/kafka.sh fetch).
// Binary: FLUX_BFF_BIN or <repo>/target/debug/flux-bff. Run: node --test tests/node/recovery.test.mjs

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";

import { TICKER_TOPIC, startKafka, startProducer, tickerSeq, tickerStream } from "./support/kafka.mjs";
import { scrape, sumBy } from "./support/metrics.mjs";
import { startProxy } from "./support/proxy.mjs";
import { connect, location, settleAll, sleep, startServer, waitReady } from "./support/server.mjs";

const SECRET = "flux-recovery-test-secret-0123456789abcdef";

let kafka;
let producer;
/** Gateways, proxies, clients and streams of the running test, released in afterEach. */
const open = { gateways: new Set(), proxies: new Set(), clients: new Set(), streams: new Set() };

/** The broker's log, for a gateway that does not get ready. */
const brokerLog = () => `\n--- broker log:\n${kafka.logTail()}`;

/** A gateway in Kafka mode with recovery on (`env` on top), ready (/readyz 200). */
async function gateway(env = {}) {
  const started = Date.now();
  const server = await startServer({
    KAFKA_BROKER_ADDRESS: kafka.address,
    FLUX_SOCKETIO__RECOVERY_SECRET: SECRET,
    FLUX_SOCKETIO__RECOVERY_WINDOW: "2m",
    FLUX_SOCKETIO__RECOVERY_TOKEN_TTL: "24h",
    FLUX_SOCKETIO__REPLAY_BUDGET: "200",
    ...env,
  });
  open.gateways.add(server);
  await waitReady(server, { timeout: 30_000, extra: brokerLog });
  console.log(`gateway on ${server.port} ready in ${Date.now() - started} ms`);
  return server;
}

async function stopGateway(server) {
  const t = Date.now();
  const exit = await server.stop();
  open.gateways.delete(server);
  console.log(`gateway on ${server.port} stopped in ${Date.now() - t} ms: ${JSON.stringify(exit)}`);
  return exit;
}

async function proxy(targets) {
  const p = await startProxy(targets);
  open.proxies.add(p);
  return p;
}

function stream() {
  const s = tickerStream(producer);
  open.streams.add(s);
  return s;
}

const isTicker = (e) => e.event === "cryptoTickerResponse" && tickerSeq(e.payload) != null;
/** A room event: the offset is its extra last argument. Hydration (direct) has none. */
const hasOffset = (e) => e.args.length === 2 && typeof e.args[1] === "string";

/**
 * A client as the real frontend: reconnection on, userLocationUpdate sent on every
 * `connect`. Records each connect ({pid, recovered}) and disconnect.
 */
function client(p, name) {
  const c = connect(p, {
    auth: { guestId: name },
    reconnection: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 500,
    randomizationFactor: 0,
  });
  c.name = name;
  c.connects = [];
  c.disconnects = [];
  c.connected.catch(() => {}); // a connect_error during a cut is expected
  c.socket.on("connect", () => {
    c.connects.push({ at: Date.now(), index: c.events.length, pid: c.socket._pid, recovered: c.socket.recovered });
    c.socket.emit("userLocationUpdate", location("Pune"));
  });
  c.socket.on("disconnect", (reason) => c.disconnects.push({ at: Date.now(), reason }));
  /** Seqs of offset-carrying (room) tickers, in arrival order, from `from` on. */
  c.roomSeqs = (from = 0) => c.events.filter((e) => isTicker(e) && hasOffset(e)).map((e) => tickerSeq(e.payload)).filter((s) => s >= from);
  /** Seqs of every ticker, with or without offset. */
  c.allSeqs = (from = 0) => c.events.filter(isTicker).map((e) => tickerSeq(e.payload)).filter((s) => s >= from);
  /** Resolves with the n-th connect (1-based), or rejects after `timeout`. */
  c.connectNo = async (n, timeout = 10_000) => {
    const deadline = Date.now() + timeout;
    while (c.connects.length < n) {
      if (Date.now() > deadline) {
        throw new Error(`${name}: connect #${n} did not happen within ${timeout} ms (connects: ${JSON.stringify(c.connects)}, disconnects: ${JSON.stringify(c.disconnects)})`);
      }
      await sleep(20);
    }
    return c.connects[n - 1];
  };
  open.clients.add(c);
  return c;
}

/** Waits until `c` received a ticker (with or without offset) of seq >= `seq`; false on timeout. */
async function waitSeq(c, seq, timeout = 10_000) {
  try {
    await c.next((e) => isTicker(e) && tickerSeq(e.payload) >= seq, { timeout });
    return true;
  } catch {
    return false;
  }
}

/**
 * Gaps and repeats of `seqs` against first..last (first = seqs[0]): {first, last, count,
 * missing, duplicated, outOfOrder, ok, text}.
 */
function audit(seqs, last) {
  const first = seqs[0];
  const seen = new Map();
  let outOfOrder = 0;
  seqs.forEach((s, i) => {
    seen.set(s, (seen.get(s) ?? 0) + 1);
    if (i > 0 && s <= seqs[i - 1]) outOfOrder++;
  });
  const missing = [];
  if (first !== undefined) for (let s = first; s <= last; s++) if (!seen.has(s)) missing.push(s);
  const duplicated = [...seen].filter(([, n]) => n > 1).map(([s, n]) => `${s}x${n}`);
  const beyond = seqs.filter((s) => s > last);
  const ok = first !== undefined && missing.length === 0 && duplicated.length === 0 && outOfOrder === 0 && beyond.length === 0;
  const short = (a) => (a.length > 40 ? `${a.slice(0, 40).join(",")},... (${a.length})` : a.join(",")) || "none";
  const text =
    first === undefined
      ? `no offset-carrying ticker received (expected ${last} as the last)`
      : `seqs ${first}..${last}: received ${seqs.length}, expected ${last - first + 1}; missing [${short(missing)}]; duplicated [${short(duplicated)}]; out of order ${outOfOrder}; beyond the last produced [${short(beyond)}]`;
  return { first, last, count: seqs.length, missing, duplicated, outOfOrder, ok, text };
}

/**
 * The recovery counters of a gateway's /metrics (0 when absent). Names in one place: they
 * may still change.
 */
async function recoveryMetrics(server) {
  const m = await scrape(server);
  const outcomes = sumBy(m, "flux_recovery_sessions_total", "outcome");
  return {
    recovered: outcomes.recovered ?? 0,
    refused: outcomes.refused ?? 0,
    replayed: sumBy(m, "flux_recovery_replayed_events_total")[""] ?? 0,
    refusedReasons: sumBy(m, "flux_recovery_refused_total", "reason"),
  };
}

/** Loose metric checks: `recovered` and/or `refused` counted at least once. */
async function assertRecoveryMetrics(server, { recovered = false, refused = false } = {}) {
  const m = await recoveryMetrics(server);
  console.log(`  metrics of ${server.port}: ${JSON.stringify(m)}`);
  if (recovered) assert.ok(m.recovered > 0, `flux_recovery_sessions_total{outcome="recovered"} should be > 0 on ${server.port}: ${JSON.stringify(m)}`);
  if (refused) assert.ok(m.refused > 0, `flux_recovery_sessions_total{outcome="refused"} should be > 0 on ${server.port}: ${JSON.stringify(m)}`);
}

const describeConnects = (c) =>
  c.connects.map((k, i) => `#${i + 1} pid=${k.pid ?? "none"} recovered=${k.recovered}`).join("; ");

/** Flips one character in the middle of a string. */
function tamper(pid) {
  const i = Math.floor(pid.length / 2);
  const ch = pid[i] === "A" ? "B" : "A";
  return pid.slice(0, i) + ch + pid.slice(i + 1);
}

describe("connection-state recovery through Kafka", { timeout: 240_000 }, () => {
  before(async () => {
    kafka = await startKafka();
    const t = Date.now();
    // The producer is assigned as soon as it is up: after() stops it if the topic fails.
    await settleAll([startProducer(kafka).then((p) => (producer = p)), kafka.createTopic(TICKER_TOPIC)]);
    console.log(`kafka: producer and topic ${TICKER_TOPIC} in ${Date.now() - t} ms`);
  });

  afterEach(async () => {
    for (const s of open.streams) await s.stop().catch(() => {});
    open.streams.clear();
    for (const c of open.clients) c.close();
    open.clients.clear();
    for (const p of open.proxies) await p.close();
    open.proxies.clear();
    for (const g of [...open.gateways]) await stopGateway(g);
  });

  after(async () => {
    await producer?.stop();
    await kafka?.stop();
  });

  it("recovers a 5 s blip on one replica: every missed ticker once, in order, then live", async () => {
    const g = await gateway();
    const p = await proxy([g.port]);
    const s = stream();
    const c = client(p, "blip");
    await c.connectNo(1);
    assert.ok(await waitSeq(c, 0, 10_000), `no ticker reached the client within 10 s: ${JSON.stringify(c.events.map((e) => e.event))}\n${g.logs()}`);
    await sleep(1000);
    const raw = c.events.filter(isTicker).slice(0, 2).map((e) => JSON.stringify(e.args).slice(0, 300));
    console.log(`  raw ticker events: ${raw.join("\n    ")}`);
    const beforeCut = c.allSeqs(s.firstSeq).at(-1);
    const cutAt = Date.now();
    await p.cut(5000);
    await c.connectNo(2, 5000);
    const reconnectMs = c.connects[1].at - cutAt;
    await sleep(2000);
    const last = await s.stop();
    const arrived = await waitSeq(c, last, 10_000);
    const seqs = c.roomSeqs(s.firstSeq);
    const a = audit(seqs, last);
    console.log(
      `  blip: produced ${s.firstSeq}..${last}, last seq before the cut ${beforeCut}, reconnected ${reconnectMs} ms after the cut began; ` +
        `${describeConnects(c)}; tickers ${c.allSeqs(s.firstSeq).length} (${seqs.length} with offset); ${a.text}`,
    );
    // Infrastructure: the cut happened and the client came back and got the last ticker.
    assert.ok(c.disconnects.length >= 1, "the cut did not disconnect the client");
    assert.ok(reconnectMs >= 4900, `reconnected ${reconnectMs} ms after the cut began (the proxy refuses for 5 s)`);
    assert.ok(arrived, `the client never received the last produced ticker ${last}: ${c.allSeqs(s.firstSeq).slice(-10)}`);
    // Recovery.
    assert.equal(c.connects[1].recovered, true, `socket.recovered after the reconnect: ${describeConnects(c)}`);
    assert.equal(c.connects[1].pid, c.connects[0].pid, "the recovered session keeps its pid");
    assert.ok(a.ok, `room tickers after a 5 s blip: ${a.text}`);
    await assertRecoveryMetrics(g, { recovered: true });
  });

  it("recovers across replicas sharing the secret: cut on A, reconnect lands on B", async () => {
    const [ga, gb] = await settleAll([gateway({ FLUX_KAFKA__CLIENT_ID: "bff-a" }), gateway({ FLUX_KAFKA__CLIENT_ID: "bff-b" })]);
    const p = await proxy([ga.port]);
    const s = stream();
    const c = client(p, "cross");
    await c.connectNo(1);
    assert.ok(await waitSeq(c, 0, 10_000), "no ticker reached the client on A within 10 s");
    await sleep(1000);
    const onB = p.stats.perTarget[gb.port] ?? 0;
    const cut = p.cut(3000);
    p.setTarget(gb.port);
    await cut;
    await c.connectNo(2, 5000);
    await sleep(2000);
    const last = await s.stop();
    const arrived = await waitSeq(c, last, 10_000);
    const a = audit(c.roomSeqs(s.firstSeq), last);
    console.log(`  cross-replica: A=${ga.port} B=${gb.port}, proxy connections ${JSON.stringify(p.stats.perTarget)}; ${describeConnects(c)}; ${a.text}`);
    assert.ok((p.stats.perTarget[gb.port] ?? 0) > onB, "the reconnect did not go to B");
    assert.ok(arrived, `the client never received the last produced ticker ${last} on B`);
    assert.equal(c.connects[1].recovered, true, `socket.recovered after the reconnect to B: ${describeConnects(c)}`);
    assert.equal(c.connects[1].pid, c.connects[0].pid, "the recovered session keeps its pid on B");
    assert.ok(a.ok, `room tickers across replicas: ${a.text}`);
    await assertRecoveryMetrics(gb, { recovered: true });
  });

  it("recovers across a restart of the only replica: what was produced while it was down is read back from Kafka", async () => {
    const g = await gateway();
    const p = await proxy([g.port]);
    const s = stream();
    const c = client(p, "restart");
    await c.connectNo(1);
    assert.ok(await waitSeq(c, 0, 10_000), "no ticker reached the client within 10 s");
    await sleep(1000);
    await stopGateway(g);
    // Down for 3 s: about 30 tickers are produced that no replica emits; the client keeps
    // trying (the proxy's connects fail).
    await sleep(3000);
    const g2 = await gateway();
    p.setTargets([g2.port]);
    await c.connectNo(2, 8000);
    await sleep(1500);
    const last = await s.stop();
    const arrived = await waitSeq(c, last, 10_000);
    const a = audit(c.roomSeqs(s.firstSeq), last);
    console.log(`  restart: ${describeConnects(c)}; ${a.text}`);
    assert.ok(arrived, `the client never received the last produced ticker ${last} from the restarted replica`);
    assert.equal(c.connects[1].recovered, true, `socket.recovered after the restart: ${describeConnects(c)}`);
    assert.ok(a.ok, `room tickers across a restart of the only replica: ${a.text}`);
    await assertRecoveryMetrics(g2, { recovered: true });
  });

  describe("refused recoveries are normal connections", () => {
    /**
     * Connects through a proxy to `g` with the stream running, waits for tickers, runs
     * `disrupt(c, p)` (which must cause one reconnect), then checks the refusal.
     */
    async function refused(g, name, disrupt) {
      const p = await proxy([g.port]);
      const s = stream();
      const c = client(p, name);
      await c.connectNo(1);
      assert.ok(await waitSeq(c, 0, 10_000), `${name}: no ticker reached the client within 10 s`);
      await sleep(500);
      const firstPid = c.socket._pid;
      const hadOffset = c.socket._lastOffset;
      await disrupt(c, p);
      const second = await c.connectNo(2, 8000);
      const lastBefore = s.lastSeq();
      const liveAny = await waitSeq(c, lastBefore + 3, 5000);
      const liveRoom = c.events.slice(second.index).filter((e) => isTicker(e) && hasOffset(e)).map((e) => tickerSeq(e.payload));
      const replayed = liveRoom.filter((seq) => seq <= lastBefore - 10);
      await s.stop();
      console.log(
        `  ${name}: pid before ${firstPid ?? "none"} (last offset ${hadOffset ?? "none"}); ${describeConnects(c)}; ` +
          `live tickers after the reconnect: ${c.allSeqs(lastBefore + 1).length} (${liveRoom.length} with offset, ${replayed.length} older than the reconnect)`,
      );
      // Infrastructure: reconnected, live again after userLocationUpdate.
      assert.ok(liveAny, `${name}: no live ticker after the reconnect and userLocationUpdate`);
      // Recovery: refused.
      assert.ok(firstPid, `${name}: the first CONNECT carried no pid (recovery off?)`);
      assert.equal(second.recovered, false, `${name}: socket.recovered after the reconnect: ${describeConnects(c)}`);
      assert.ok(second.pid && second.pid !== firstPid && second.pid !== c.tamperedPid, `${name}: a new pid expected: ${describeConnects(c)}`);
      assert.ok(liveRoom.length > 0, `${name}: no live room ticker (with offset) after the refused recovery`);
      assert.equal(replayed.length, 0, `${name}: a refused recovery replayed ${replayed}`);
      await assertRecoveryMetrics(g, { refused: true });
    }

    it("a forged pid", async () => {
      const g = await gateway();
      await refused(g, "forged", async (c) => {
        // Without a pid (recovery off) there is nothing to forge: the reconnect is still
        // forced, and the pid assertions in refused() name the failure.
        if (c.socket._pid) {
          c.tamperedPid = tamper(c.socket._pid);
          c.socket._pid = c.tamperedPid;
        }
        c.socket.io.engine.close();
      });
    });

    it("an expired token (TOKEN_TTL=2s, reconnect after 3 s)", async () => {
      const g = await gateway({ FLUX_SOCKETIO__RECOVERY_TOKEN_TTL: "2s" });
      await refused(g, "expired", async (c) => {
        const since = Date.now() - c.connects[0].at;
        await sleep(Math.max(0, 3000 - since));
        c.socket.io.engine.close();
      });
    });

    it("an offset outside the window (WINDOW=1s, cut for 3 s)", async () => {
      const g = await gateway({ FLUX_SOCKETIO__RECOVERY_WINDOW: "1s" });
      await refused(g, "window", async (_c, p) => {
        await p.cut(3000);
      });
    });
  });

  it("survives a rolling restart of two replicas with 10 clients: nothing lost, nothing twice", async () => {
    let [ga, gb] = await settleAll([gateway({ FLUX_KAFKA__CLIENT_ID: "bff-a" }), gateway({ FLUX_KAFKA__CLIENT_ID: "bff-b" })]);
    const p = await proxy([ga.port, gb.port]);
    const s = stream();
    const clients = Array.from({ length: 10 }, (_, i) => client(p, `rolling-${i}`));
    await Promise.all(clients.map((c) => c.connectNo(1)));
    const ok = await Promise.all(clients.map((c) => waitSeq(c, 0, 10_000)));
    assert.ok(ok.every(Boolean), `clients without any ticker: ${clients.filter((_, i) => !ok[i]).map((c) => c.name)}`);
    await sleep(1000);
    console.log(`  rolling: initial spread ${JSON.stringify(p.stats.perTarget)}`);

    // Each replica is down for 1 s before its successor starts: its clients reconnect
    // meanwhile, and the proxy fails over from its dead port to the other replica.
    await stopGateway(ga);
    await sleep(1000);
    ga = await gateway({ FLUX_KAFKA__CLIENT_ID: "bff-a" });
    p.setTargets([ga.port, gb.port]);
    await sleep(1500);
    await stopGateway(gb);
    await sleep(1000);
    gb = await gateway({ FLUX_KAFKA__CLIENT_ID: "bff-b" });
    p.setTargets([ga.port, gb.port]);
    await sleep(2000);

    const last = await s.stop();
    const arrived = await Promise.all(clients.map((c) => waitSeq(c, last, 10_000)));
    const report = clients.map((c, i) => ({ c, a: audit(c.roomSeqs(s.firstSeq), last), arrived: arrived[i] }));
    for (const { c, a, arrived: got } of report) {
      console.log(
        `  ${c.name}: connected=${c.socket.connected} connects=${c.connects.length} (recovered ${c.connects.filter((k) => k.recovered).length}) ` +
          `disconnects=[${c.disconnects.map((d) => d.reason)}] last arrived=${got}; tickers ${c.allSeqs(s.firstSeq).length}; ${a.text}`,
      );
    }
    console.log(`  rolling: proxy ${JSON.stringify(p.stats)}`);
    // Infrastructure: every client ends connected and has the last ticker.
    const disconnected = report.filter(({ c }) => !c.socket.connected).map(({ c }) => c.name);
    assert.deepEqual(disconnected, [], "clients not connected at the end");
    const late = report.filter(({ arrived: got }) => !got).map(({ c }) => c.name);
    assert.deepEqual(late, [], `clients that never received the last ticker ${last}`);
    assert.ok(report.some(({ c }) => c.connects.length > 1), "no client was moved by the restarts");
    // Recovery.
    const notRecovered = report.filter(({ c }) => c.connects.slice(1).some((k) => k.recovered !== true)).map(({ c }) => `${c.name}: ${describeConnects(c)}`);
    assert.deepEqual(notRecovered, [], "reconnects that were not recovered");
    const bad = report.filter(({ a }) => !a.ok).map(({ c, a }) => `${c.name}: ${a.text}`);
    assert.deepEqual(bad, [], "clients that lost or repeated tickers across the rolling restart");
  });
});
