// One ticker's WebSocket message with connection-state recovery on (the default) and off
// (FLUX_SOCKETIO__RECOVERY_WINDOW=0s): a raw Engine.IO/Socket.IO client (package `ws` of
// tests/node) joins the rooms of a spawned release gateway (embedded mode, admin hook on),
// one ticker is published, then 3499 more in ndjson requests of 350 (the events of a 10 s run
// at 350/s), and the first and the last ticker message are printed with their sizes.
//
//   FLUX_BFF_BIN=target/release/flux-bff node bench/2026-12-04-recovery/frame.mjs
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fs from "node:fs";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
process.env.FLUX_BFF_BIN = path.resolve(process.env.FLUX_BFF_BIN || path.join(repo, "target/release/flux-bff"));
const { startServer, sleep } = await import(path.join(repo, "tests/node/support/server.mjs"));
const WebSocket = createRequire(path.join(repo, "tests/node/package.json"))("ws");

const TOPIC = "crypto.ticker.event.updated";
const ticker = JSON.stringify(JSON.parse(fs.readFileSync(path.join(repo, "fixtures", `${TOPIC}.json`), "utf8")));
const LOCATION = { city: "Pune", region: "Maharashtra", country: "IN", lat: 18.52, lon: 73.85, ip: "127.0.0.1" };

async function post(server, body, ndjson) {
  const q = new URLSearchParams({ topic: TOPIC, key: "BTC-USD" });
  if (ndjson) q.set("format", "ndjson");
  const r = await fetch(`${server.url}/admin/publish?${q}`, { method: "POST", body });
  if (!r.ok) throw new Error(`publish answered ${r.status}: ${await r.text()}`);
}

async function capture(label, env) {
  const server = await startServer({ FLUX_ADMIN__PUBLISH: "true", FLUX_SIM__ENABLED: "false", ...env });
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
    const tickers = [];
    let connectReply = null;
    ws.on("message", (data) => {
      const text = data.toString();
      if (text === "2") ws.send("3");
      else if (text.startsWith("0")) ws.send(`40${JSON.stringify({ guestId: "frame-probe" })}`);
      else if (text.startsWith("40")) {
        connectReply = text;
        ws.send(`42${JSON.stringify(["userLocationUpdate", LOCATION])}`);
      } else if (text.startsWith('42["cryptoTickerResponse"')) tickers.push(text);
    });
    while (!connectReply) await sleep(20);
    await sleep(500); // the joins
    await post(server, ticker, false);
    while (tickers.length < 1) await sleep(20);
    for (let i = 0; i < 10; i++) {
      const n = i === 0 ? 349 : 350;
      await post(server, Array.from({ length: n }, () => ticker).join("\n"), true);
      await sleep(100);
    }
    const deadline = Date.now() + 10_000;
    while (tickers.length < 3500 && Date.now() < deadline) await sleep(50);
    ws.close();
    const size = (t) => Buffer.byteLength(t);
    const extra = (t) => {
      const args = JSON.parse(t.slice(2));
      return args.length > 2 ? JSON.stringify(args.slice(2)) : "(none)";
    };
    console.log(`== ${label}`);
    console.log(`CONNECT reply (${size(connectReply)} B): ${connectReply}`);
    console.log(`tickers received: ${tickers.length}`);
    for (const [which, t] of [["first", tickers[0]], ["last", tickers[tickers.length - 1]]]) {
      console.log(`${which} ticker message: ${size(t)} B; arguments after the payload: ${extra(t)}`);
    }
    console.log(`first ticker message: ${tickers[0]}`);
    console.log();
    return tickers.map(size);
  } finally {
    await server.stop();
  }
}

const on = await capture("recovery on (default, recovery_window 2m)", {});
const off = await capture("recovery off (FLUX_SOCKETIO__RECOVERY_WINDOW=0s)", { FLUX_SOCKETIO__RECOVERY_WINDOW: "0s" });
const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
console.log(`mean ticker message: on ${mean(on).toFixed(1)} B, off ${mean(off).toFixed(1)} B, difference ${(mean(on) - mean(off)).toFixed(1)} B`);
