// The chaos soak's own logic, without any server: the schedule is a pure function of the
// seed, and each invariant tells a loss from a documented exception as README's
// "Chaos soak" says. Run: node --test tests/node/chaos/

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { parseMetrics, sumBy } from "../support/metrics.mjs";
import { labelOf } from "../support/proxy.mjs";
import { checkClient, checkCommands, offsetTime, scanLog, streamOf } from "./invariants.mjs";
import { FAULT_KINDS, makeSchedule, prng, scheduleDigest } from "./schedule.mjs";

describe("metrics", () => {
  const m = parseMetrics(
    [
      "# HELP flux_recovery_refused_total Refused recoveries.",
      "# TYPE flux_recovery_refused_total counter",
      'flux_recovery_refused_total{reason="expired",ns="/"} 2',
      'flux_recovery_refused_total{reason="unknown",ns="/"} 1',
      'flux_recovery_refused_total{reason="expired",ns="/x"} 4',
      "flux_sockets_connected 7",
      'flux_delivery_seconds_bucket{le="0.1"} 9',
      "flux_delivery_seconds_count 9",
    ].join("\n"),
  );

  it("sums one name's series, not its longer namesakes", () => {
    assert.deepEqual(sumBy(m, "flux_recovery_refused_total"), { "": 7 });
    assert.deepEqual(sumBy(m, "flux_sockets_connected"), { "": 7 });
    assert.deepEqual(sumBy(m, "flux_delivery_seconds"), {});
  });

  it("groups by a label and keeps only the series with every asked pair", () => {
    assert.deepEqual(sumBy(m, "flux_recovery_refused_total", "reason"), { expired: 6, unknown: 1 });
    assert.deepEqual(sumBy(m, "flux_recovery_refused_total", null, { reason: "expired", ns: "/" }), { "": 2 });
    assert.deepEqual(sumBy(m, "flux_recovery_refused_total", "ns", { reason: "expired" }), { "/": 2, "/x": 4 });
    assert.deepEqual(sumBy(m, "flux_sockets_connected", "reason"), {});
  });
});

describe("schedule", () => {
  it("is the same for the same seed and differs for another", () => {
    const a = makeSchedule(7, { durationMs: 90_000, clients: 8 });
    const b = makeSchedule(7, { durationMs: 90_000, clients: 8 });
    const c = makeSchedule(8, { durationMs: 90_000, clients: 8 });
    assert.deepEqual(a, b);
    assert.equal(scheduleDigest(a), scheduleDigest(b));
    assert.notEqual(scheduleDigest(a), scheduleDigest(c));
  });

  it("draws every kind of fault in 90 s, one or two at a time, never on a busy broker", () => {
    for (const seed of [1, 2, 3, "ci"]) {
      const s = makeSchedule(seed, { durationMs: 90_000, clients: 8 });
      const kinds = new Set(s.map((f) => f.kind));
      assert.equal(kinds.size, FAULT_KINDS.length, `seed ${seed}: ${s.map((f) => f.kind)}`);
      const broker = s.filter((f) => ["broker_term", "broker_kill", "add_partition"].includes(f.kind));
      for (let i = 1; i < broker.length; i++) {
        const prev = broker[i - 1];
        const busyFor = prev.kind === "add_partition" ? 5_000 : prev.downMs + 20_000;
        assert.ok(broker[i].at >= prev.at + busyFor, `seed ${seed}: #${broker[i].id} while the broker restarts after #${prev.id}`);
      }
      const perInstant = new Map();
      for (const f of s) perInstant.set(f.at, (perInstant.get(f.at) ?? 0) + 1);
      assert.ok([...perInstant.values()].every((n) => n === 1 || n === 2));
      assert.ok(s.every((f) => f.at >= 6_000 && f.at <= 80_000));
      for (const f of s.filter((x) => x.kind === "add_partition")) assert.ok(f.partitions >= 2 && f.partitions <= 4);
    }
  });

  it("gives a reproducible stream of numbers and guest ids", () => {
    const a = prng("x");
    const b = prng("x");
    assert.deepEqual([a.next(), a.int(1, 6), a.uuid()], [b.next(), b.int(1, 6), b.uuid()]);
    assert.match(prng(3).uuid(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe("events", () => {
  const truth = (stream, from, to) => ({ [stream]: new Map(Array.from({ length: to - from + 1 }, (_, i) => [from + i, 1])) });
  const sent = (stream, from, to, at = (s) => s * 100) => ({ [stream]: new Map(Array.from({ length: to - from + 1 }, (_, i) => [from + i, at(from + i)])) });
  const client = (events, connects = [{ at: 0, recovered: false, attempted: false }], extra = {}) => ({
    name: "c0",
    connects,
    stalls: [],
    firstAt: {},
    streams: { "ticker:BTC-USD": events.map(([seq, at, conn = 0]) => ({ seq, at, conn })) },
    ...extra,
  });
  const S = "ticker:BTC-USD";

  it("finds the number of each stream and nothing in other events", () => {
    assert.deepEqual(streamOf("cryptoTickerResponse", { data: { data: { product_id: "ETH-USD", sequence: 4 } } }), { stream: "ticker:ETH-USD", seq: 4 });
    assert.deepEqual(streamOf("newsUpdate", { data: [{ id: "seq-12" }] }), { stream: "news", seq: 12 });
    assert.deepEqual(streamOf("stockTopPerformersResponse", { data: { meta: { sequence: 3 } } }), { stream: "stocks", seq: 3 });
    assert.equal(streamOf("newsUpdate", { data: [{ id: "8c1f0e4b" }] }), null);
    assert.equal(streamOf("session:init", {}), null);
  });

  it("reads the emit time from an offset", () => {
    // version 1, then 1796574836629 as a varint, then one topic of one partition at 0
    const bytes = [1];
    let v = 1796574836629;
    while (v >= 128) {
      bytes.push((v % 128) | 0x80);
      v = Math.floor(v / 128);
    }
    bytes.push(v, 1, 1, 0);
    assert.equal(offsetTime(Buffer.from(bytes).toString("base64url")), 1796574836629);
    assert.equal(offsetTime("not an offset"), null);
  });

  it("passes every number once in order, from the first received", () => {
    const r = checkClient(client([[3, 300], [4, 400], [5, 500]]), truth(S, 1, 5), sent(S, 1, 5));
    assert.deepEqual([r.checked, r.lost.length, r.duplicated.length, r.outOfOrder.length], [3, 0, 0, 0]);
  });

  it("counts a gap, a repeat and a step back", () => {
    const r = checkClient(client([[1, 100], [2, 200], [4, 400], [4, 450], [3, 460], [5, 500]]), truth(S, 1, 6), sent(S, 1, 6));
    assert.deepEqual(r.duplicated.map((x) => x.seq), [4]);
    assert.deepEqual(r.outOfOrder.map((x) => x.seq), [3]);
    assert.deepEqual(r.lost.map((x) => x.seq), [6]);
  });

  it("tells a reorder across a partition move from one within a partition", () => {
    const partitions = { [S]: new Map([[1, 0], [2, 0], [3, 1], [4, 1]]) };
    const moved = checkClient(client([[1, 100], [3, 300], [2, 310], [4, 400]]), truth(S, 1, 4), sent(S, 1, 4), {}, partitions);
    assert.deepEqual([moved.outOfOrder.length, moved.exceptions.partition_move_reorder], [0, 1]);
    const same = checkClient(client([[1, 100], [3, 300], [2, 310], [4, 400]]), truth(S, 1, 4), sent(S, 1, 4), {}, { [S]: new Map([[1, 0], [2, 0], [3, 0], [4, 0]]) });
    assert.equal(same.outOfOrder.length, 1);
  });

  it("loses what a recovered reconnect did not replay", () => {
    const connects = [{ at: 0, recovered: false, attempted: false }, { at: 700, recovered: true, attempted: true }];
    const r = checkClient(client([[1, 100], [2, 200], [5, 710, 1], [6, 720, 1]], connects), truth(S, 1, 6), sent(S, 1, 6), { recoveryConflated: 0 });
    assert.deepEqual(r.lost.map((x) => x.seq), [3, 4]);
  });

  it("excuses tickers conflated in a replay over budget, only if produced before the reconnect", () => {
    const connects = [{ at: 0, recovered: false, attempted: false }, { at: 550, recovered: true, attempted: true }];
    const events = [[1, 100], [2, 200], [5, 560, 1], [6, 610, 1]];
    const r = checkClient(client(events, connects), truth(S, 1, 6), sent(S, 1, 6), { recoveryConflated: 2 });
    assert.deepEqual([r.lost.length, r.exceptions.replay_conflated], [0, 2]);
    // The replacement (5) produced after the reconnect could not be in the replay.
    const late = checkClient(client(events, [connects[0], { ...connects[1], at: 450 }]), truth(S, 1, 6), sent(S, 1, 6), { recoveryConflated: 2 });
    assert.equal(late.lost.length, 2);
    // Nor one emitted live after it (its offset's time), however early it was produced.
    const live = client(events, connects);
    live.streams[S][2].emitAt = 650;
    assert.equal(checkClient(live, truth(S, 1, 6), sent(S, 1, 6), { recoveryConflated: 2 }).lost.length, 2);
  });

  it("excuses what was emitted before a refused recovery's re-join, and nothing after", () => {
    const connects = [{ at: 0, recovered: false, attempted: false }, { at: 650, recovered: false, attempted: true, reason: "over_budget" }];
    const events = [[1, 100], [2, 200], [7, 720, 1], [8, 800, 1]];
    // First event after the connect at 660: numbers written before it may be missing.
    const r = checkClient(client(events, connects, { firstAt: { 1: 660 } }), truth(S, 1, 8), sent(S, 1, 8));
    assert.deepEqual([r.lost.length, r.exceptions["refused:over_budget"]], [0, 4]);
    // The client was back in its rooms at 450: 5 and 6 came after and must have arrived.
    const r2 = checkClient(client(events, connects, { firstAt: { 1: 450 } }), truth(S, 1, 8), sent(S, 1, 8));
    assert.deepEqual(r2.lost.map((x) => x.seq), [5, 6]);
    // A refused connection that died before any room event leaves the old offset: the next,
    // recovered, connect must replay what was missed.
    const died = [...connects, { at: 700, recovered: true, attempted: true }];
    const later = [[1, 100], [2, 200], [7, 720, 2], [8, 800, 2]];
    assert.equal(checkClient(client(later, died, { firstAt: { 1: 660 } }), truth(S, 1, 8), sent(S, 1, 8)).lost.length, 4);
    assert.equal(checkClient(client(later, died, { firstAt: { 1: 660 }, roomAt: { 1: 665 } }), truth(S, 1, 8), sent(S, 1, 8)).lost.length, 0);
    // No session id presented (recovery off): every gap is a loss.
    const off = [{ at: 0, recovered: false, attempted: false }, { at: 650, recovered: false, attempted: false }];
    assert.equal(checkClient(client(events, off, { firstAt: { 1: 660 } }), truth(S, 1, 8), sent(S, 1, 8)).lost.length, 4);
  });

  it("excuses repeats from a replica behind the client after an 'ahead' refusal, nothing else", () => {
    const connects = [{ at: 0, recovered: false, attempted: false }, { at: 650, recovered: false, attempted: true, reason: "ahead" }];
    // 3 and 4 again on the refused connection, from the replica that was behind.
    const events = [[1, 100], [2, 200], [3, 300], [4, 400], [3, 700, 1], [4, 710, 1], [5, 720, 1]];
    const r = checkClient(client(events, connects, { firstAt: { 1: 700 } }), truth(S, 1, 5), sent(S, 1, 5));
    assert.deepEqual([r.duplicated.length, r.exceptions["refused:ahead_duplicate"]], [0, 2]);
    // Another reason, or a repeat within one connection: duplicates.
    const other = [connects[0], { ...connects[1], reason: "over_budget" }];
    assert.equal(checkClient(client(events, other, { firstAt: { 1: 700 } }), truth(S, 1, 5), sent(S, 1, 5)).duplicated.length, 2);
    const within = [[1, 100], [2, 200], [2, 250], [3, 700, 1]];
    assert.equal(checkClient(client(within, connects, { firstAt: { 1: 700 } }), truth(S, 1, 3), sent(S, 1, 3)).duplicated.length, 1);
  });

  it("excuses the repeats of a second 'ahead' refusal of what came between the two", () => {
    // Found by the CI soak (seed 1): refused as `ahead` on connection 1, then moved and
    // refused as `ahead` again on connection 3; connection 3's replica repeats 3 and 4, which
    // arrived first on connection 2, after the first refusal.
    const connects = [
      { at: 0, recovered: false, attempted: false },
      { at: 150, recovered: false, attempted: true, reason: "ahead" },
      { at: 250, recovered: true, attempted: true },
      { at: 650, recovered: false, attempted: true, reason: "ahead" },
    ];
    const events = [[1, 100], [2, 200, 1], [3, 300, 2], [4, 400, 2], [3, 700, 3], [4, 710, 3], [5, 720, 3]];
    const r = checkClient(client(events, connects, { firstAt: { 1: 200, 3: 700 } }), truth(S, 1, 5), sent(S, 1, 5));
    assert.deepEqual([r.duplicated.length, r.exceptions["refused:ahead_duplicate"]], [0, 2]);
    // The same repeats on the recovered connection 2 (no refusal since they first came): duplicates.
    const recovered = [[1, 100], [2, 200, 1], [3, 300, 2], [3, 310, 2], [4, 400, 2]];
    assert.equal(checkClient(client(recovered, connects, { firstAt: { 1: 200 } }), truth(S, 1, 4), sent(S, 1, 4)).duplicated.length, 1);
  });

  it("excuses tickers conflated for a client that stopped reading, and repeats after its stall", () => {
    const stalls = [{ from: 250, to: 600 }];
    const r = checkClient(client([[1, 100], [2, 200], [5, 650], [6, 700], [6, 900]], undefined, { stalls }), truth(S, 1, 6), sent(S, 1, 6), { laggingConflated: 2 });
    assert.deepEqual([r.lost.length, r.exceptions.lagging_conflated, r.exceptions.lagging_duplicate, r.duplicated.length], [0, 2, 1, 0]);
  });
});

describe("commands", () => {
  const rec = (key, userId, city) => ({ topic: "weather.service.command.fetch", headers: { "idempotency-key": key }, key: "sock", value: JSON.stringify({ event: "locationUpdate", userId, data: { city } }) });
  const updates = [
    { userId: "u", city: "A", duringFault: true },
    { userId: "u", city: "B", duringFault: false },
  ];

  it("accepts a retried send under the same key, counted", () => {
    const r = checkCommands([rec("k1", "u", "A"), rec("k1", "u", "A"), rec("k2", "u", "B")], { "weather.service.command.fetch": 2 }, updates);
    assert.deepEqual(r.violations, []);
    assert.equal(r.topics["weather.service.command.fetch"].duplicatesByKey, 1);
    assert.deepEqual([r.landed, r.landedDuringFaults], [2, 1]);
  });

  it("fails an accepted command missing from the topic, and one update sent twice", () => {
    assert.equal(checkCommands([rec("k1", "u", "A")], { "weather.service.command.fetch": 2 }, updates).violations.length, 1);
    assert.equal(checkCommands([rec("k1", "u", "A"), rec("k2", "u", "A")], { "weather.service.command.fetch": 2 }, updates).violations.length, 1);
  });
});

describe("logs and the proxy", () => {
  it("finds error lines and panics in a JSON log", () => {
    const s = scanLog(
      [
        '{"level":"INFO","message":"listening"}',
        '{"level":"WARN","message":"command not sent"}',
        '{"level":"ERROR","message":"boom"}',
        "thread 'tokio-rt-worker' panicked at vendor/socketioxide/src/io.rs:1:1:",
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
      ].join("\n"),
    );
    assert.equal(s.errors.length, 1);
    assert.equal(s.panics.length, 1);
    assert.deepEqual(s.warnings, { "?: command not sent": 1 });
    assert.deepEqual(s.other, []);
  });

  it("tells known error lines from others, the broker ones only during a broker fault", () => {
    const unavailable = '{"timestamp":"2026-12-06T16:26:30.865Z","level":"ERROR","error":"command sink unavailable: x","target":"flux_bff::adapters::kafka::command_sink"}';
    const exists = '{"timestamp":"2026-12-06T16:26:02.796Z","level":"ERROR","message":"request encountered fatal error","e":"Server error TopicAlreadyExists","target":"rskafka::client::controller"}';
    const during = scanLog(`${unavailable}\n${exists}`, { brokerDown: (t) => t === Date.parse("2026-12-06T16:26:30.865Z") });
    assert.deepEqual([during.errors.length, during.known], [0, { kafka_unavailable_at_error: 1, topic_exists_race: 1 }]);
    assert.equal(scanLog(unavailable).errors.length, 1);
    assert.equal(scanLog(exists, { strict: true }).errors.length, 1);
  });

  it("reads a client's label from its request line", () => {
    assert.equal(labelOf(Buffer.from("GET /socket.io/?chaos=c3&EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\r\n")), "c3");
    assert.equal(labelOf(Buffer.from("GET /socket.io/?EIO=4&transport=websocket&chaos=c12 HTTP/1.1\r\n")), "c12");
    assert.equal(labelOf(Buffer.from("GET /socket.io/?EIO=4 HTTP/1.1\r\n")), null);
  });
});
