// A reconnect herd: N socket.io-client sockets on one gateway lose their connections at once
// (a TCP proxy cuts them all for CUT_MS, as when a load balancer drops a replica) and all
// come back together asking for recovery. What it costs: how long until every client is
// recovered, whether any lost or repeated a ticker, the live latency of tickers before and
// right after the herd, and the gateway's recovery counters.
//
//   cargo build --release --bin flux-bff
//   FLUX_BFF_BIN=target/release/flux-bff node bench/2026-12-04-recovery/herd.mjs
//
// Environment: HERD_CLIENTS (1000), HERD_RATE (tickers/s, 20), HERD_CUT_MS (3000),
// HERD_RECOVERY_WINDOW (the gateway's socketio.recovery_window; `0s` for recovery off). Embedded
// mode with the admin publish hook; one product, a sequence number as its price and the
// publish time as its `ts`. The clients run in this one Node process: their own CPU is part
// of the latency figures (compare before and after, not with other sections).
import path from "node:path";
import { fileURLToPath } from "node:url";
import fs from "node:fs";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
process.env.FLUX_BFF_BIN = path.resolve(process.env.FLUX_BFF_BIN || path.join(repo, "target/release/flux-bff"));
const { startServer, connect, location, sleep } = await import(path.join(repo, "tests/node/support/server.mjs"));
const { startProxy } = await import(path.join(repo, "tests/node/support/proxy.mjs"));

const CLIENTS = Number(process.env.HERD_CLIENTS || 1000);
const RATE = Number(process.env.HERD_RATE || 20);
const CUT_MS = Number(process.env.HERD_CUT_MS || 3000);
const TOPIC = "crypto.ticker.event.updated";
const template = JSON.parse(fs.readFileSync(path.join(repo, "fixtures", `${TOPIC}.json`), "utf8"));

const server = await startServer({
  FLUX_ADMIN__PUBLISH: "true",
  FLUX_SIM__ENABLED: "false",
  FLUX_HTTP__MAX_CONNECTIONS_PER_CLIENT: "0",
  FLUX_LOG__LEVEL: "warn",
  // HERD_RECOVERY_WINDOW=0s: the same herd with recovery off, for comparison.
  ...(process.env.HERD_RECOVERY_WINDOW ? { FLUX_SOCKETIO__RECOVERY_WINDOW: process.env.HERD_RECOVERY_WINDOW } : {}),
});
const proxy = await startProxy([server.port]);

let seq = 0;
async function publish(n) {
  const lines = [];
  for (let i = 0; i < n; i++) {
    seq += 1;
    lines.push(JSON.stringify({ ...template, ts: Date.now(), data: { ...template.data, price: String(seq) } }));
  }
  const q = new URLSearchParams({ topic: TOPIC, key: "BTC-USD", format: "ndjson" });
  const r = await fetch(`${server.url}/admin/publish?${q}`, { method: "POST", body: lines.join("\n") });
  if (!r.ok) throw new Error(`publish answered ${r.status}: ${await r.text()}`);
}

// Latency samples (ms) of live room tickers, by phase.
const latency = { before: [], after: [] };
let phase = null;
let backAt = Infinity;
const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const c = connect(proxy, {
    auth: { guestId: `herd-${i}` },
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
    randomizationFactor: 0.5,
  });
  c.seqs = [];
  c.connects = [];
  c.connected.catch(() => {});
  c.socket.io.on("reconnect_attempt", () => (c.attemptAt = Date.now()));
  c.socket.on("connect", () => {
    c.connects.push({ at: Date.now(), recovered: c.socket.recovered, tookMs: c.attemptAt ? Date.now() - c.attemptAt : null });
    c.socket.emit("userLocationUpdate", location("Pune"));
  });
  c.socket.on("cryptoTickerResponse", (payload, offset) => {
    if (typeof offset !== "string") return; // hydration: no offset
    const s = Number(payload?.data?.data?.price);
    c.seqs.push(s);
    // After the cut: tickers published once the proxy accepted again (those of the cut are
    // replayed, late by design); a late client's wait for its reconnect is counted.
    if (phase === "before" || (phase === "after" && payload.data.ts >= backAt)) {
      latency[phase].push(Date.now() - payload.data.ts);
    }
  });
  clients.push(c);
  if (i % 100 === 99) await sleep(50);
}
const deadline = Date.now() + 30_000;
while (clients.some((c) => c.connects.length === 0) && Date.now() < deadline) await sleep(50);
await sleep(500);

let publishing = true;
const publisher = (async () => {
  const every = 50;
  let due = Date.now();
  let carry = 0;
  while (publishing) {
    carry += (RATE * every) / 1000;
    const n = Math.floor(carry);
    carry -= n;
    if (n > 0) await publish(n);
    due += every;
    await sleep(Math.max(0, due - Date.now()));
  }
})();

function quantiles(text, name) {
  const out = {};
  for (const m of text.matchAll(new RegExp(`^${name}\\{quantile="([^"]+)"\\} (\\S+)`, "gm"))) {
    out[`q${m[1]}`] = Number((Number(m[2]) * 1000).toFixed(3));
  }
  return out;
}

const metrics = async () => {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const get = (re) => [...text.matchAll(re)].reduce((a, m) => a + Number(m[1]), 0);
  return {
    recovered: get(/^flux_recovery_sessions_total\{[^}]*outcome="recovered"[^}]*\} (\S+)/gm),
    refused: get(/^flux_recovery_sessions_total\{[^}]*outcome="refused"[^}]*\} (\S+)/gm),
    replayed: get(/^flux_recovery_replayed_events_total (\S+)/gm),
    conflated: get(/^flux_recovery_conflated_events_total (\S+)/gm),
    // The gateway's own time per recovering handshake and per replay (summaries, seconds).
    handshake_ms: quantiles(text, "flux_recovery_handshake_seconds"),
    replay_ms: quantiles(text, "flux_recovery_replay_seconds"),
  };
};

phase = "before";
await sleep(3000);
const firstSeq = clients.reduce((a, c) => Math.min(a, c.seqs[0] ?? Infinity), Infinity);
phase = null;
const cutAt = Date.now();
await proxy.cut(CUT_MS);
backAt = Date.now();
phase = "after";
while (clients.some((c) => c.connects.length < 2) && Date.now() < backAt + 30_000) await sleep(20);
const allBackMs = Date.now() - backAt;
await sleep(3000);
phase = null;
publishing = false;
await publisher;
const last = seq;
const settle = Date.now() + 10_000;
while (clients.some((c) => (c.seqs.at(-1) ?? 0) < last) && Date.now() < settle) await sleep(50);

let missing = 0;
let dups = 0;
let lossy = 0;
for (const c of clients) {
  const seen = new Map();
  for (const s of c.seqs) seen.set(s, (seen.get(s) ?? 0) + 1);
  const from = c.seqs[0];
  let m = 0;
  for (let s = from; s <= last; s++) if (!seen.has(s)) m++;
  const d = [...seen.values()].filter((n) => n > 1).length;
  missing += m;
  dups += d;
  if (m || d) lossy++;
}
const pct = (a, p) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};
const recoveredClients = clients.filter((c) => c.connects[1]?.recovered === true).length;
// From the client's last reconnect attempt to its `connect` event: the Engine.IO handshake,
// the recovery check and the replay's CONNECT reply, under the herd.
const handshakes = clients.map((c) => c.connects[1]?.tookMs).filter((t) => t != null);
const m = await metrics();
const result = {
  clients: CLIENTS,
  rate: RATE,
  cut_ms: CUT_MS,
  first_seq: firstSeq,
  last_seq: last,
  all_reconnected_ms: allBackMs,
  cut_took_ms: backAt - cutAt,
  clients_recovered: recoveredClients,
  clients_with_loss_or_repeat: lossy,
  missing_total: missing,
  repeated_total: dups,
  reconnect_handshake_ms: { p50: pct(handshakes, 50), p99: pct(handshakes, 99), max: handshakes.reduce((a, b) => Math.max(a, b), 0) },
  latency_before_ms: { p50: pct(latency.before, 50), p99: pct(latency.before, 99), max: latency.before.reduce((a, b) => Math.max(a, b), 0) },
  latency_after_ms: { p50: pct(latency.after, 50), p99: pct(latency.after, 99), max: latency.after.reduce((a, b) => Math.max(a, b), 0) },
  gateway: m,
};
console.log(JSON.stringify(result, null, 2));
for (const c of clients) c.close();
await proxy.close();
await server.stop();
process.exit(0);
