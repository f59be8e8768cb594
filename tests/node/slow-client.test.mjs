// A client that stops reading, played with the official socket.io-client against the
// flux-bff binary in embedded mode (simulator off, admin publish hook on): once its backlog
// overflows (`socketio.max_backlog`), the gateway closes its connection (D30), and the client
// reconnects on its own, as after a network failure. A Socket.IO DISCONNECT packet would have
// stopped it for good ("io server disconnect"), and found no room in its full queue anyway.
// Binary: FLUX_BFF_BIN or <repo>/target/debug/flux-bff. Run: node --test tests/node/

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import { metric } from "./support/metrics.mjs";
import { connect, fixture, location, publish, sleep, startServer } from "./support/server.mjs";

describe("a client that stops reading", () => {
  let server;
  let client;

  before(async () => {
    server = await startServer({
      FLUX_SIM__ENABLED: "false",
      FLUX_ADMIN__PUBLISH: "true",
      FLUX_SOCKETIO__MAX_BUFFER: "16",
      FLUX_SOCKETIO__MAX_BACKLOG: "4",
    });
  });

  after(async () => {
    client?.close();
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly: ${JSON.stringify(exit)}\n${server?.logs()}`);
  });

  it("is dropped by closing its connection once its backlog overflows, and reconnects", async () => {
    client = connect(server, {
      auth: { guestId: randomUUID() },
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
    });
    await client.connected;
    const init = await client.next("session:init");
    const disconnects = [];
    client.socket.on("disconnect", (reason) => disconnects.push(reason));
    let connects = 1;
    client.socket.on("connect", () => connects++);
    client.socket.emit("userLocationUpdate", location("Pune"));
    await sleep(200); // joined its rooms

    // It stops reading: the TCP socket under its WebSocket is paused.
    const tcp = client.socket.io.engine.transport.ws._socket;
    tcp.pause();

    // Tickers it does not read (16 KB each) until it lags, then news, which a lagging
    // socket's backlog keeps in order, beyond its bound of 4.
    const tick = fixture("crypto.ticker.event.updated.json");
    tick.pad = "x".repeat(16 * 1024);
    const news = fixture("news.service.event.updated.json");
    const deadline = Date.now() + 60_000;
    let ticks = 0;
    while ((await metric(server, "flux_slow_socket_disconnects_total")) < 1) {
      assert.ok(Date.now() < deadline, `the client was not dropped after ${ticks} ticks`);
      for (let i = 0; i < 100; i++, ticks++) {
        tick.ts = ticks;
        await publish(server, "crypto.ticker.event.updated", "BTC-USD", tick);
      }
      for (let i = 0; i < 8; i++) await publish(server, "news.service.event.updated", "globalnews", news);
    }
    const handled = Date.now() + 5_000;
    while ((await metric(server, "flux_socket_disconnects_total", { reason: "server_disconnect" })) < 1) {
      assert.ok(Date.now() < handled, "its disconnect handler did not run");
      await sleep(20);
    }

    // It reads again: the connection ends, not with "io server disconnect", and the client
    // connects again on its own.
    tcp.resume();
    const until = Date.now() + 30_000;
    while (connects < 2) {
      assert.ok(Date.now() < until, `no reconnection (disconnects: ${JSON.stringify(disconnects)})`);
      await sleep(50);
    }
    assert.ok(disconnects.length >= 1, "it saw its connection end");
    assert.notEqual(disconnects[0], "io server disconnect", "dropped with a DISCONNECT packet: the client would stay away");
    assert.ok(client.socket.active, "the client keeps reconnecting");
    await client.next("session:init", { after: init.index + 1 });
  });
});
