// The BENCHMARKS tables of the chaos soak from the drivers' summary.json files:
//   node bench/2026-12-06-chaos/table.mjs bench/2026-12-06-chaos/seed-*.summary.json
import fs from "node:fs";

const runs = process.argv.slice(2).map((f) => JSON.parse(fs.readFileSync(f, "utf8")));
const kinds = ["broker_term", "broker_kill", "valkey_kill", "replica_kill", "replica_term", "proxy_cut", "move_clients", "add_partition", "stall_client"];
const add = (a, b) => {
  for (const [k, v] of Object.entries(b ?? {})) a[k] = (a[k] ?? 0) + v;
  return a;
};
const kv = (o) => Object.entries(o).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
const sum = (f) => runs.reduce((n, r) => n + (f(r) ?? 0), 0);
const max = (f) => Math.max(0, ...runs.map(f));

console.log("| seed | s | faults | events checked | lost | duplicated | out of order | documented exceptions | reconnects (recovered / refused) | refused by reason | worst time to ready (fault alone; any) | commands accepted / landed | max RSS MB | panics / error lines | violations |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of runs) {
  const w = r.commands?.topics?.["weather.service.command.fetch"] ?? { accepted: 0, landed: 0 };
  console.log(
    `| ${r.seed} | ${r.durationS} | ${r.faults} | ${r.eventsChecked} | ${r.lost} | ${r.duplicated} | ${r.outOfOrder} | ${kv(r.exceptions)} | ${r.reconnects} (${r.recoveredByClients} / ${r.refusedByClients}) | ${kv(r.recovery.refusedByReason)} | ${(r.worstReadyAloneMs / 1000).toFixed(1)} s; ${(r.worstReadyMs / 1000).toFixed(1)} s | ${w.accepted} / ${w.landed} | ${Math.max(...Object.values(r.rssMaxMb))} | ${r.logs.panics} / ${r.logs.errors} | ${r.violations.length} |`,
  );
}
const exceptions = runs.reduce((a, r) => add(a, r.exceptions), {});
const refused = runs.reduce((a, r) => add(a, r.recovery.refusedByReason), {});
console.log(
  `| **all** | ${sum((r) => r.durationS)} | ${sum((r) => r.faults)} | ${sum((r) => r.eventsChecked)} | ${sum((r) => r.lost)} | ${sum((r) => r.duplicated)} | ${sum((r) => r.outOfOrder)} | ${kv(exceptions)} | ${sum((r) => r.reconnects)} (${sum((r) => r.recoveredByClients)} / ${sum((r) => r.refusedByClients)}) | ${kv(refused)} | ${(max((r) => r.worstReadyAloneMs) / 1000).toFixed(1)} s; ${(max((r) => r.worstReadyMs) / 1000).toFixed(1)} s | ${sum((r) => r.commands?.topics?.["weather.service.command.fetch"]?.accepted)} / ${sum((r) => r.commands?.topics?.["weather.service.command.fetch"]?.landed)} | ${max((r) => Math.max(...Object.values(r.rssMaxMb)))} | ${sum((r) => r.logs.panics)} / ${sum((r) => r.logs.errors)} | ${sum((r) => r.violations.length)} |`,
);
console.log("");
console.log("| fault | injected | worst time to ready after it |");
console.log("|---|---|---|");
for (const k of kinds) {
  const n = sum((r) => r.faultsByKind[k]);
  const ready = max((r) => r.readyByKind?.[k] ?? 0);
  console.log(`| ${k} | ${n} | ${(ready / 1000).toFixed(1)} s |`);
}
console.log("");
console.log(`known gateway error lines: ${kv(runs.reduce((a, r) => add(a, r.logs.knownErrors), {}))}`);
console.log(`replayed ${sum((r) => r.recovery.replayed)}, replay-conflated ${sum((r) => r.recovery.conflated)}, lagging-conflated ${sum((r) => r.conflation.lagging)}, slow disconnects ${sum((r) => r.conflation.slowDisconnects)}`);
for (const r of runs) for (const v of r.violations) console.log(`seed ${r.seed}: ${v.split("\n").slice(0, 6).join(" / ").slice(0, 600)}`);
