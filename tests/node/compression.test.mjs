// WebSocket permessage-deflate with the official socket.io-client in Node (its `ws` transport
// offers the extension by default, as every browser does), watched through a sniffing proxy
// that counts the frames with RSV1 set (compressed messages) in each direction:
// - the extension is negotiated and live room events arrive in compressed frames, decoded to
//   the very payloads of fixtures/expected;
// - the client's own large messages go compressed and the gateway handles them;
// - a client that does not offer it (`perMessageDeflate: false`) gets plain frames;
// - with `socketio.compression` off, nobody gets compressed frames.
// Binary: FLUX_BFF_BIN or <repo>/target/debug/flux-bff. Run: node --test tests/node/

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import { connect, fixture, location, publish, sleep, startServer } from "./support/server.mjs";
import { startSniffer } from "./support/sniffer.mjs";

const ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const expected = (topic) => fixture(`expected/${topic}.expected.json`);
/** The payload fixtures/expected gives for `topic`'s room push. */
const pushed = (topic) => expected(topic).emits[0].payload;
/** The payload fixtures/expected gives for the reply from the cache (as hydration sends it). */
const cached = (topic) => expected(topic).thenOnRequest.reply.payload;

/** Publishes every snapshot fixture and waits until a request is answered from the cache. */
async function cacheSnapshots(server) {
  await publish(server, "crypto.movers.event.updated", null, fixture("crypto.movers.event.updated.json"));
  await publish(server, "crypto.topcoins.event.updated", null, fixture("crypto.topcoins.event.updated.json"));
  await publish(server, "news.service.event.updated", "globalnews", fixture("news.service.event.updated.json"));
  await publish(server, "stock.service.event.updated", null, fixture("stock.service.event.updated.json"));
  const probe = connect(server, { auth: { guestId: randomUUID() } });
  try {
    await probe.next("session:init");
    for (let i = 0; ; i++) {
      const at = probe.events.length;
      probe.socket.emit("stockTopPerformersRequest");
      const r = await probe.next("stockTopPerformersResponse", { after: at });
      if (r.payload.status === "success") break;
      assert.ok(i < 50, "the snapshots were never cached");
      await sleep(50);
    }
  } finally {
    probe.close();
  }
}

/** Joins Pune's rooms; resolves with the hydration replies, by event name. */
async function join(c) {
  const at = c.events.length;
  c.socket.emit("userLocationUpdate", location("Pune"));
  const replies = {};
  for (const event of ["newsUpdate", "cryptoTopCoinsResponse", "cryptoTopMoversResponse", "stockTopPerformersResponse"]) {
    replies[event] = (await c.next(event, { after: at })).payload;
  }
  return replies;
}

describe("permessage-deflate with socket.io-client (ws transport)", () => {
  let server;
  let sniffer;
  const sockets = [];
  const open = (opts) => {
    const c = connect(sniffer, opts);
    sockets.push(c);
    return c;
  };

  before(async () => {
    server = await startServer({ FLUX_SIM__ENABLED: "false", FLUX_ADMIN__PUBLISH: "true" });
    sniffer = await startSniffer(server.port);
    await cacheSnapshots(server);
  });

  after(async () => {
    for (const s of sockets) s.close();
    await sniffer?.close();
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly: ${JSON.stringify(exit)}\n${server?.logs()}`);
  });

  it("negotiates it and gets hydration and live room events in compressed frames", async () => {
    const c = open({ auth: { guestId: randomUUID() } });
    await c.next("session:init");
    const conn = sniffer.websockets().at(-1);
    assert.match(conn.request, /sec-websocket-extensions: permessage-deflate/i, "ws offers the extension");
    assert.equal(conn.extensions, ACCEPTED);
    assert.equal(c.socket.io.engine.transport.ws.extensions, "permessage-deflate");

    const replies = await join(c);
    assert.deepStrictEqual(replies.cryptoTopMoversResponse, cached("crypto.movers.event.updated"));
    assert.deepStrictEqual(replies.newsUpdate, cached("news.service.event.updated"));
    const afterHydration = conn.fromServer.compressed;
    assert.ok(afterHydration >= 4, `the four snapshots came compressed: ${JSON.stringify(conn.fromServer)}`);

    const at = c.events.length;
    await publish(server, "crypto.ticker.event.updated", "BTC-USD", fixture("crypto.ticker.event.updated.json"));
    await publish(server, "stock.service.event.updated", null, fixture("stock.service.event.updated.json"));
    const tick = await c.next("cryptoTickerResponse", { after: at });
    assert.deepStrictEqual(tick.payload, pushed("crypto.ticker.event.updated"));
    const stocks = await c.next("stockTopPerformersResponse", { after: at });
    assert.deepStrictEqual(stocks.payload, pushed("stock.service.event.updated"));
    assert.ok(conn.fromServer.compressed >= afterHydration + 2, `live events came compressed: ${JSON.stringify(conn.fromServer)}`);
    // session:init, pings and the connect acknowledgement stay plain (below the threshold).
    assert.ok(conn.fromServer.data > conn.fromServer.compressed);
  });

  it("inflates the client's own compressed messages", async () => {
    const c = open({ auth: { guestId: randomUUID() } });
    await c.next("session:init");
    const conn = sniffer.websockets().at(-1);
    // engine.io-client compresses messages of 1 KB and more.
    const at = c.events.length;
    c.socket.emit("userLocationUpdate", location("Pune", { note: "n".repeat(4096) }));
    const reply = await c.next("cryptoTopCoinsResponse", { after: at });
    assert.equal(reply.payload.status, "success");
    assert.ok(conn.fromClient.compressed >= 1, `the client compressed its message: ${JSON.stringify(conn.fromClient)}`);
  });

  it("sends plain frames to a client that does not offer it", async () => {
    const c = open({ auth: { guestId: randomUUID() }, perMessageDeflate: false });
    await c.next("session:init");
    const conn = sniffer.websockets().at(-1);
    assert.doesNotMatch(conn.request, /sec-websocket-extensions/i);
    assert.equal(conn.extensions, null);
    await join(c);
    const at = c.events.length;
    await publish(server, "crypto.ticker.event.updated", "ETH-USD", fixture("crypto.ticker.event.updated.json"));
    await c.next("cryptoTickerResponse", { after: at });
    assert.equal(conn.fromServer.compressed, 0);
    assert.ok(conn.fromServer.data >= 6);
  });
});

describe("permessage-deflate turned off (socketio.compression = false)", () => {
  let server;
  let sniffer;
  let c;

  before(async () => {
    server = await startServer({
      FLUX_SIM__ENABLED: "false",
      FLUX_ADMIN__PUBLISH: "true",
      FLUX_SOCKETIO__COMPRESSION: "false",
    });
    sniffer = await startSniffer(server.port);
    await cacheSnapshots(server);
  });

  after(async () => {
    c?.close();
    await sniffer?.close();
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly: ${JSON.stringify(exit)}\n${server?.logs()}`);
  });

  it("declines the offer and sends plain frames", async () => {
    c = connect(sniffer, { auth: { guestId: randomUUID() } });
    await c.next("session:init");
    const conn = sniffer.websockets().at(-1);
    assert.match(conn.request, /sec-websocket-extensions: permessage-deflate/i);
    assert.equal(conn.extensions, null);
    assert.equal(c.socket.io.engine.transport.ws.extensions, "");
    await join(c);
    const at = c.events.length;
    await publish(server, "crypto.ticker.event.updated", "BTC-USD", fixture("crypto.ticker.event.updated.json"));
    await c.next("cryptoTickerResponse", { after: at });
    assert.equal(conn.fromServer.compressed, 0);
    assert.ok(conn.fromServer.data >= 6);
  });
});
