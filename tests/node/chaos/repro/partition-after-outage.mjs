// Reproduces a gateway bug the chaos soak found (seed 1 with --recovery-window 0s, faults #7
// add_partition then #14 broker_term 12 ms later): a partition added to an event topic that
// the consumer has not seen yet (kafka.metadata_refresh, 10 s) when it loses the broker is
// opened at its log end when the consumer re-subscribes (KafkaEventSource::open_all: a
// partition missing from the positions starts at `latest`), so whatever was produced to it
// between the broker's return and the re-subscription is never delivered, nor journaled for
// recovery. README says added partitions are "read from their beginning".
// One gateway, six keys on a ticker topic; partition added, broker stopped at once for 20 s,
// then keyed records for 3 s: the keys that moved to the new partition lose what came before
// the consumer's back-off ended. Exit 1 when records were lost.
//   FLUX_BFF_BIN=target/debug/flux-bff node tests/node/chaos/repro/partition-after-outage.mjs
import { io } from "socket.io-client";
import { startKafka, startProducer } from "../../support/kafka.mjs";
import { fixture, sleep, startServer } from "../../support/server.mjs";
const TOPIC = "crypto.ticker.event.updated";
const kafka = await startKafka();
await kafka.createTopic(TOPIC);
const g = await startServer({ KAFKA_BROKER_ADDRESS: kafka.address, FLUX_LOG__LEVEL: "info,flux_bff::adapters::kafka=debug" });
for (let i = 0; i < 300 && !(await fetch(`${g.url}/readyz`).then((r) => r.ok).catch(() => false)); i++) await sleep(100);
const got = [];
const c = io(g.url, { transports: ["websocket"], auth: { guestId: "p" } });
c.on("connect", () => c.emit("userLocationUpdate", { city: "Pune" }));
c.onAny((ev, p) => { if (ev === "cryptoTickerResponse") got.push(`${p.data.data.product_id}#${p.data.data.sequence}`); });
const producer = await startProducer(kafka, TOPIC, { keyed: true, producerProps: ["acks=all"], args: ["--metadata-expiry-ms", "500"] });
const tpl = fixture("crypto.ticker.event.updated.json");
const send = (k, seq) => { const t = structuredClone(tpl); t.data.product_id = k; t.data.sequence = seq; producer.send(t, k); };
const keys = ["K0", "K1", "K2", "K3", "K4", "K5"];
let lost = 0;
let seq = 0;
for (let i = 0; i < 5; i++) { seq++; for (const k of keys) send(k, seq); await sleep(100); }
await sleep(1500);
console.log(`before: ${got.length} tickers`);
await kafka.alterPartitions(TOPIC, 2);
await kafka.kill("SIGTERM");
console.log("partition added, broker stopped");
await sleep(Number(process.env.DOWN ?? 20000));
await kafka.start();
console.log("broker back");
const back = Date.now();
for (let i = 0; i < 30; i++) { seq++; for (const k of keys) send(k, seq); await sleep(100); }
console.log(`produced 30 rounds from ${new Date(back).toISOString()}`);
await sleep(15000);
for (const k of keys) {
  const seqs = got.filter((x) => x.startsWith(`${k}#`)).map((x) => Number(x.split("#")[1]));
  const missing = []; for (let s = 1; s <= seq; s++) if (!seqs.includes(s)) missing.push(s);
  lost += missing.length;
  console.log(`${k}: received ${seqs.length} of ${seq}; missing ${missing.length ? `${missing[0]}..${missing.at(-1)} (${missing.length})` : "none"}`);
}
console.log(g.logs().split("\n").filter((l) => /reconnected|new partition|lost the broker|starting partition.*ticker/.test(l)).map((l) => l.slice(0, 200)).join("\n"));
c.disconnect(); await producer.stop(); await g.stop(); await kafka.stop();
process.exit(lost ? 1 : 0);
