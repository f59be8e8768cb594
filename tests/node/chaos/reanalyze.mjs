#!/usr/bin/env node
// Checks a finished soak's events again from its raw.json (what every client received, the
// log read back, the gateway's conflation counts), without another run: for a second look at
// a failure, or after a change to invariants.mjs.
//
//   node tests/node/chaos/reanalyze.mjs target/chaos/seed-1 [client [stream [from to]]]
//
// With a client (and stream, numbers), prints that client's connections and, number by
// number, when each record was written, appended and emitted, and when it arrived.

import fs from "node:fs";
import path from "node:path";

import { asRanges, checkClient } from "./invariants.mjs";

const [dir, who, stream, from, to] = process.argv.slice(2);
if (!dir) {
  console.error("usage: reanalyze.mjs DIR [client [stream [from to]]]");
  process.exit(2);
}
const raw = JSON.parse(fs.readFileSync(path.join(dir, "raw.json"), "utf8"));
const rel = (t) => (t == null ? "-" : ((t - raw.t0) / 1000).toFixed(3));
const maps = (o) => Object.fromEntries(Object.entries(o ?? {}).map(([k, v]) => [k, new Map(v)]));
const truth = maps(raw.truth);
const sendAt = maps(raw.sendAt);
const appendAt = maps(raw.appendAt);
const partitionOf = raw.partitionOf ? maps(raw.partitionOf) : null;
const emittable = {};
for (const [s, m] of Object.entries(sendAt)) emittable[s] = new Map([...m].map(([seq, t]) => [seq, Math.max(t, appendAt[s]?.get(seq) ?? t)]));

if (!who) {
  const all = { lost: [], duplicated: [], outOfOrder: [], foreign: [] };
  const exceptions = {};
  let checked = 0;
  for (const c of raw.clients) {
    const r = checkClient(c, truth, emittable, raw.gateway, partitionOf);
    checked += r.checked;
    for (const k of Object.keys(all)) all[k].push(...r[k].map((x) => ({ client: c.name, ...x })));
    for (const [k, v] of Object.entries(r.exceptions)) exceptions[k] = (exceptions[k] ?? 0) + v;
  }
  console.log(`checked ${checked}; lost ${all.lost.length}, duplicated ${all.duplicated.length}, out of order ${all.outOfOrder.length}, not in the log ${all.foreign.length}; exceptions ${JSON.stringify(exceptions)}`);
  for (const k of Object.keys(all)) for (const line of asRanges(all[k])) console.log(`  ${k}: ${line}`);
  process.exit(0);
}

const c = raw.clients.find((x) => x.name === who);
if (!c) throw new Error(`no client ${who}`);
console.log(`${c.name} (${c.userId})`);
c.connects.forEach((k, i) =>
  console.log(`  connect #${i + 1} at ${rel(k.at)} on ${k.replica}: ${k.recovered ? "recovered" : k.attempted ? `refused (${k.reason})` : "new session"}, first event ${rel(c.firstAt[i])}`),
);
console.log(`  disconnects: ${c.disconnects.map((d) => `${rel(d.at)} ${d.reason}`).join(", ")}`);
console.log(`  stalls: ${c.stalls.map((s) => `${rel(s.from)}-${rel(s.to)}`).join(", ") || "none"}`);
if (stream) {
  const got = new Map();
  for (const e of c.streams[stream] ?? []) if (!got.has(e.seq)) got.set(e.seq, e);
  const lo = Number(from ?? 1);
  const hi = Number(to ?? Math.max(...got.keys()));
  for (let s = lo; s <= hi; s++) {
    const e = got.get(s);
    const where = e ? `arrived ${rel(e.at)} (emitted ${rel(e.emitAt)}) on connection #${e.conn + 1}` : "MISSING";
    console.log(`  ${stream}#${s}: written ${rel(sendAt[stream]?.get(s))}, appended ${rel(appendAt[stream]?.get(s))}${partitionOf ? ` to partition ${partitionOf[stream]?.get(s)}` : ""}, ${where}`);
  }
}
