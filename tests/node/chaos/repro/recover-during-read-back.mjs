// Reproduces a gateway bug the chaos soak found (seed 1, first runs: client c7 recovered on
// bff-b 0.5 s after that replica restarted, and never got stocks #27-49): a client that
// recovers on a replica still reading its recovery window back at start-up (D26) is admitted
// as soon as the journal reaches the client's offset (Journal::check), replayed what is
// journaled so far and joined to its rooms; the rest of the read-back is journaled as history
// and never emitted, so the client misses every record between its offset and the replica's
// live start. Here: one client on replica A at ticker 2000, A killed, 5000 more tickers,
// replica B started, the client reconnects to B at once: recovered=true, yet it gets a couple
// of tickers from the start of the read-back and never the 5000th (nor, for a stream that is
// not conflated, the records between). Exit 1 when the last ticker produced never arrived.
//   FLUX_BFF_BIN=target/debug/flux-bff node tests/node/chaos/repro/recover-during-read-back.mjs [2000 5000]
import fs from "node:fs";
import { spawn } from "node:child_process";
import { io } from "socket.io-client";
import { startKafka } from "../../support/kafka.mjs";
import { startProxy } from "../../support/proxy.mjs";
import { fixture, repo, sleep, startServer } from "../../support/server.mjs";

const BEFORE = Number(process.argv[2] ?? 2000); // tickers in the window before the client's cut
const DURING = Number(process.argv[3] ?? 5000); // tickers produced while the client is away
const TOPIC = "crypto.ticker.event.updated";
const kafka = await startKafka();
await kafka.createTopic(TOPIC);
const tpl = fixture("crypto.ticker.event.updated.json");
const rec = (seq) => { const t = structuredClone(tpl); t.data.sequence = seq; t.ts = Date.now(); return JSON.stringify(t); };
async function produce(from, to) {
  const file = `/tmp/chaos-repro/batch-${from}.txt`;
  fs.mkdirSync("/tmp/chaos-repro", { recursive: true });
  fs.writeFileSync(file, Array.from({ length: to - from + 1 }, (_, i) => rec(from + i)).join("\n") + "\n");
  await new Promise((resolve) => spawn("bash", ["-c", `bash scripts/kafka.sh tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server ${kafka.address} --topic ${TOPIC} --producer-property linger.ms=5 < ${file}`], { cwd: repo, stdio: "inherit" }).on("exit", resolve));
}
const env = { KAFKA_BROKER_ADDRESS: kafka.address, FLUX_SOCKETIO__RECOVERY_SECRET: "repro-secret-0123456789-0123456789-abcdef" };
const a = await startServer(env);
for (let i = 0; i < 300 && !(await fetch(`${a.url}/readyz`).then((r) => r.ok).catch(() => false)); i++) await sleep(100);
const proxy = await startProxy([a.port]);
const got = [];
const socket = io(proxy.url, { transports: ["websocket"], auth: { guestId: "repro-user" }, reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0 });
const connects = [];
socket.on("connect", () => { connects.push({ at: Date.now(), recovered: socket.recovered }); socket.emit("userLocationUpdate", { city: "Pune" }); });
socket.onAny((ev, ...args) => { if (ev === "cryptoTickerResponse" && args.length === 2) got.push({ seq: args[0].data.data.sequence, at: Date.now() }); });
await sleep(2000);
await produce(1, BEFORE);
for (let i = 0; i < 100 && got.at(-1)?.seq !== BEFORE; i++) await sleep(100);
console.log(`live on A up to ${got.at(-1)?.seq} (${got.length} tickers)`);
const cut = proxy.cut(600_000);
await a.kill("SIGKILL");
await produce(BEFORE + 1, BEFORE + DURING);
const b = await startServer(env);
const bStarted = Date.now();
proxy.setTarget(b.port);
await proxy.cut(0);
for (let i = 0; i < 100 && connects.length < 2; i++) await sleep(50);
await sleep(8000);
const after = got.filter((g) => g.at >= connects[1]?.at);
console.log(`reconnect ${connects[1]?.at - bStarted} ms after B listened, recovered=${connects[1]?.recovered}; after it: ${after.length} tickers, first ${after[0]?.seq}, last ${after.at(-1)?.seq}; produced up to ${BEFORE + DURING}`);
const m = await (await fetch(`${b.url}/metrics`)).text();
console.log(m.split("\n").filter((l) => /^flux_recovery_(sessions|refused|replayed|conflated)/.test(l)).join("\n"));
socket.disconnect();
await proxy.close(); await b.stop(); await kafka.stop();
process.exit(after.at(-1)?.seq === BEFORE + DURING ? 0 : 1);
