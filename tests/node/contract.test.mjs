// The wire contract played with the official socket.io-client (the library the real Flux
// frontend uses) against the flux-bff binary in embedded mode:
// - instance "live": the built-in simulator at fast rates (hydration, requests, live pushes,
//   the weather command round trip);
// - instance "cold": simulator off, admin publish hook on (cache misses, then the exact
//   payloads of fixtures/expected for every stream).
// Binary: FLUX_BFF_BIN or <repo>/target/debug/flux-bff. Run: node --test tests/node/

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import { connect, fixture, location, publish, sleep, startServer } from "./support/server.mjs";

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Deep equality and the same key order (what JSON.stringify on the client would show). */
function sameJson(got, want, message) {
  assert.deepStrictEqual(got, want, message);
  assert.equal(JSON.stringify(got), JSON.stringify(want), `${message} (key order)`);
}

const keys = (o) => Object.keys(o ?? {});

describe("flux-bff contract, live simulator", () => {
  let server;
  const sockets = [];
  const open = (opts) => {
    const c = connect(server, opts);
    sockets.push(c);
    return c;
  };

  before(async () => {
    server = await startServer({
      FLUX_SIM__TICKER_INTERVAL: "200ms",
      FLUX_SIM__MOVERS_INTERVAL: "2s",
      FLUX_SIM__NEWS_INTERVAL: "3s",
      FLUX_SIM__STOCKS_INTERVAL: "3s",
      FLUX_SIM__SEED: "42",
    });
    // The simulator publishes its first snapshots at once; wait until they are cached.
    const probe = open({ auth: { guestId: "probe" } });
    await probe.next("session:init");
    for (let i = 0; ; i++) {
      const at = probe.events.length;
      probe.socket.emit("stockTopPerformersRequest");
      const reply = await probe.next("stockTopPerformersResponse", { after: at });
      if (reply.payload.status === "success") break;
      assert.ok(i < 50, "the simulator's snapshots never reached the cache");
      await sleep(100);
    }
  });

  after(async () => {
    for (const s of sockets) s.close();
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly: ${JSON.stringify(exit)}\n${server?.logs()}`);
  });

  describe("handshake and identity", () => {
    it("sends session:init first, with the guestId given in auth", async () => {
      const guestId = randomUUID();
      const c = open({ auth: { guestId } });
      const first = await c.next(() => true);
      assert.equal(first.event, "session:init");
      assert.equal(first.index, 0);
      sameJson(first.payload, { userId: guestId, userType: "guest" }, "session:init");
    });

    it("trims the guestId", async () => {
      const c = open({ auth: { guestId: "  alice  " } });
      const init = await c.next("session:init");
      assert.equal(init.payload.userId, "alice");
    });

    for (const [name, auth] of [
      ["a number", { guestId: 42 }],
      ["an empty string", { guestId: "" }],
      ["whitespace", { guestId: "   " }],
      ["129 characters", { guestId: "x".repeat(129) }],
      ["no guestId at all", undefined],
    ]) {
      it(`gives a fresh UUID v4 for ${name}, without rejecting the handshake`, async () => {
        const c = open({ auth });
        await c.connected;
        const init = await c.next("session:init");
        assert.equal(init.index, 0);
        assert.match(init.payload.userId, UUID_V4);
        assert.equal(init.payload.userType, "guest");
      });
    }

    it("answers getUserId with userUniqueId carrying the same id", async () => {
      const c = open({ auth: { guestId: "legacy-client" } });
      await c.next("session:init");
      c.socket.emit("getUserId");
      const reply = await c.next("userUniqueId");
      assert.equal(reply.payload, "legacy-client");
    });
  });

  describe("rooms and hydration", () => {
    it("hydrates every cached snapshot on userLocationUpdate, news first and no tickers", async () => {
      const c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
      const at = c.events.length;
      c.socket.emit("userLocationUpdate", location("Pune"));
      const news = await c.next("newsUpdate", { after: at });
      const movers = await c.next((e) => e.event === "cryptoTopMoversResponse" && e.payload.source === "cache", { after: at });
      const coins = await c.next((e) => e.event === "cryptoTopCoinsResponse" && e.payload.source === "cache", { after: at });
      const stocks = await c.next((e) => e.event === "stockTopPerformersResponse" && !("error" in e.payload), { after: at });
      assert.ok(news.index < movers.index && movers.index < coins.index && coins.index < stocks.index, "hydration order: news, movers, coins, stocks");

      assert.deepEqual(keys(news.payload), ["status", "scope", "data"]);
      assert.equal(news.payload.status, "success");
      assert.equal(news.payload.scope, "global");
      assert.ok(news.payload.data.length >= 8);
      assert.deepEqual(keys(news.payload.data[0]), ["id", "title", "description", "image", "url", "source", "publishedAt", "category"]);

      assert.deepEqual(keys(movers.payload), ["status", "source", "data"]);
      assert.deepEqual(keys(movers.payload.data), ["topGainers", "topLosers"]);
      assert.equal(movers.payload.data.topGainers.data.length, 10);
      assert.deepEqual(keys(coins.payload), ["status", "source", "data"]);
      assert.deepEqual(keys(coins.payload.data), ["topCoins"]);
      assert.deepEqual(keys(stocks.payload), ["status", "data"]);
      assert.deepEqual(keys(stocks.payload.data), ["meta", "timestamp", "topGainers", "topLosers"]);

      // D3: tickers are relayed, never hydrated: anything that arrives is a live push.
      const tickers = c.events.filter((e) => e.index > at && e.event === "cryptoTickerResponse");
      for (const t of tickers) assert.ok(t.index > news.index, "no ticker before the hydration");
    });

    it("treats a null location as {} (joins weather.Delhi, no crash, still hydrates)", async () => {
      const c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
      const at = c.events.length;
      c.socket.emit("userLocationUpdate", null);
      await c.next("newsUpdate", { after: at });
      c.socket.emit("getUserId");
      await c.next("userUniqueId", { after: at });
      assert.ok(c.socket.connected);
      // In weather.Delhi: another client's Delhi location brings the room its weather.
      const other = open({ auth: { guestId: randomUUID() } });
      await other.next("session:init");
      other.socket.emit("userLocationUpdate", location("Delhi", { lat: 28.61, lon: 77.21 }));
      await c.next("weather.Delhi.update", { after: at });
    });
  });

  describe("requests answered from the cache", () => {
    let c;
    before(async () => {
      c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
    });
    const cases = [
      ["cryptoTopMoversRequest", "cryptoTopMoversResponse", ["status", "source", "data"]],
      ["cryptoTopCoinsRequest", "cryptoTopCoinsResponse", ["status", "source", "data"]],
      ["stockTopPerformersRequest", "stockTopPerformersResponse", ["status", "data"]],
      ["topNewsRequest", "newsUpdate", ["status", "scope", "data"]],
    ];
    for (const [request, reply, shape] of cases) {
      it(`${request} → ${reply} success`, async () => {
        const at = c.events.length;
        c.socket.emit(request);
        const r = await c.next(reply, { after: at });
        assert.deepEqual(keys(r.payload), shape);
        assert.equal(r.payload.status, "success");
        if (shape.includes("source")) assert.equal(r.payload.source, "cache");
      });
    }
  });

  describe("live pushes and commands", () => {
    let c;
    let joined;
    before(async () => {
      c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
      joined = c.events.length;
      c.socket.emit("userLocationUpdate", location("Lyon", { country: "FR", lat: 45.764, lon: 4.8357 }));
    });

    it("pushes tickers (Coinbase ticker objects, prices moving)", async () => {
      const first = await c.next("cryptoTickerResponse", { after: joined });
      const p = first.payload;
      assert.deepEqual(keys(p), ["status", "data", "error"]);
      assert.equal(p.status, "success");
      assert.equal(p.error, null);
      assert.deepEqual(keys(p.data), ["source", "ts", "data"]);
      assert.equal(p.data.source, "coinbase");
      assert.deepEqual(keys(p.data.data), [
        "type", "product_id", "price", "volume_24_h", "low_24_h", "high_24_h", "low_52_w", "high_52_w",
        "price_percent_chg_24_h", "best_bid", "best_bid_quantity", "best_ask", "best_ask_quantity",
      ]);
      for (const v of Object.values(p.data.data)) assert.equal(typeof v, "string");
      const product = p.data.data.product_id;
      const moved = await c.next(
        (e) => e.event === "cryptoTickerResponse" && e.payload.data.data.product_id === product && e.payload.data.data.price !== p.data.data.price,
        { after: first.index + 1 },
      );
      assert.ok(moved);
    });

    it("pushes top movers and top coins as cryptoTopMoversResponse / cryptoTopCoinsResponse", async () => {
      const movers = await c.next((e) => e.event === "cryptoTopMoversResponse" && "error" in e.payload, { after: joined, timeout: 6_000 });
      assert.deepEqual(keys(movers.payload), ["status", "data", "error"]);
      assert.deepEqual(keys(movers.payload.data), ["topGainers", "topLosers"]);
      assert.equal(movers.payload.data.topLosers.data.length, 10);
      const coins = await c.next((e) => e.event === "cryptoTopCoinsResponse" && "error" in e.payload, { after: joined, timeout: 6_000 });
      assert.deepEqual(keys(coins.payload), ["status", "data", "error"]);
      assert.ok(!c.events.some((e) => e.event === "topMoversResponse"), "D2: no topMoversResponse");
    });

    it("names the ticking products in the top coins list", async () => {
      const coins = await c.next((e) => e.event === "cryptoTopCoinsResponse", { after: joined });
      const symbols = new Set(coins.payload.data.topCoins.map((x) => x.symbol));
      const products = new Set(c.events.filter((e) => e.event === "cryptoTickerResponse").map((e) => e.payload.data.data.product_id));
      assert.ok(products.size >= 5);
      for (const p of products) assert.ok(symbols.has(p), `${p} is in the top coins`);
    });

    it("pushes news and stock performers", async () => {
      const hydrated = await c.next("newsUpdate", { after: joined });
      const news = await c.next("newsUpdate", { after: hydrated.index + 1, timeout: 8_000 });
      assert.deepEqual(keys(news.payload), ["status", "scope", "data"]);
      const stocks = await c.next((e) => e.event === "stockTopPerformersResponse" && "error" in e.payload, { after: joined, timeout: 8_000 });
      assert.deepEqual(keys(stocks.payload), ["status", "data", "error"]);
      assert.equal(stocks.payload.data.topGainers.length, 10);
    });

    it("round-trips the weather command through the simulator", async () => {
      const w = await c.next("weather.Lyon.update", { after: joined });
      assert.deepEqual(keys(w.payload), ["data", "status"]);
      assert.equal(w.payload.status, "success");
      const d = w.payload.data;
      assert.equal(d.city, "Lyon");
      assert.deepEqual(keys(d), [
        "city", "temperatureC", "temperatureF", "feelslikeC", "condition", "humidity", "windMph", "windKph",
        "windDegree", "windDir", "icon", "pressureMb", "visibilityKm", "airQuality", "lastUpdated", "fetchedAt",
      ]);
      assert.match(d.lastUpdated, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$/);
      assert.equal(d.airQuality.pm25, d.airQuality.pm2_5, "D8: pm25 alias");
      assert.equal(d.airQuality.usEpaIndex, d.airQuality["us-epa-index"], "D8: usEpaIndex alias");
    });

    it("follows one city at a time: a new city leaves the old room (D5)", async () => {
      const at = c.events.length;
      c.socket.emit("userLocationUpdate", location("Tokyo", { country: "JP", lat: 35.68, lon: 139.65 }));
      await c.next("weather.Tokyo.update", { after: at });
      // Another user asks for Lyon: its weather goes to weather.Lyon, which c has left.
      const other = open({ auth: { guestId: randomUUID() } });
      await other.next("session:init");
      other.socket.emit("userLocationUpdate", location("Lyon", { country: "FR", lat: 45.764, lon: 4.8357 }));
      await other.next("weather.Lyon.update");
      await sleep(300);
      assert.ok(!c.events.slice(at).some((e) => e.event === "weather.Lyon.update"), "no Lyon weather after switching to Tokyo");
    });
  });
});

describe("flux-bff contract, cold cache and fixtures", () => {
  let server;
  const sockets = [];
  const open = (opts) => {
    const c = connect(server, opts);
    sockets.push(c);
    return c;
  };
  const expected = (topic) => fixture(`expected/${topic}.expected.json`);

  before(async () => {
    server = await startServer({ FLUX_SIM__ENABLED: "false", FLUX_ADMIN__PUBLISH: "true" });
  });

  after(async () => {
    for (const s of sockets) s.close();
    const exit = await server?.stop();
    assert.equal(exit?.code, 0, `flux-bff did not exit cleanly: ${JSON.stringify(exit)}\n${server?.logs()}`);
  });

  it("answers the four requests with their loading payloads on a cache miss", async () => {
    const c = open({ auth: { guestId: randomUUID() } });
    await c.next("session:init");
    const cases = [
      ["cryptoTopMoversRequest", "cryptoTopMoversResponse", { status: "loading", message: "Data will refresh when backend reconnects" }],
      ["cryptoTopCoinsRequest", "cryptoTopCoinsResponse", { status: "loading", message: "Fetching latest crypto top coins" }],
      ["stockTopPerformersRequest", "stockTopPerformersResponse", { status: "loading", message: "Data will refresh when backend reconnects" }],
      ["topNewsRequest", "newsUpdate", { status: "loading", message: "Fetching latest news" }],
    ];
    for (const [request, reply, payload] of cases) {
      const at = c.events.length;
      c.socket.emit(request);
      const r = await c.next(reply, { after: at });
      sameJson(r.payload, payload, `${request} on a cold cache`);
    }
  });

  it("hydrates nothing on userLocationUpdate while nothing is cached", async () => {
    const c = open({ auth: { guestId: randomUUID() } });
    await c.next("session:init");
    c.socket.emit("userLocationUpdate", location("Pune"));
    await sleep(500);
    assert.deepEqual(c.events.map((e) => e.event), ["session:init"]);
  });

  describe("with every fixture published", () => {
    let member;
    let joined;

    before(async () => {
      member = open({ auth: { guestId: randomUUID() } });
      await member.next("session:init");
      member.socket.emit("userLocationUpdate", location("Pune"));
      await sleep(300); // rooms joined
      joined = member.events.length;
      await publish(server, "crypto.ticker.event.updated", "BTC-USD", fixture("crypto.ticker.event.updated.json"));
      await publish(server, "crypto.movers.event.updated", null, fixture("crypto.movers.event.updated.json"));
      await publish(server, "crypto.topcoins.event.updated", null, fixture("crypto.topcoins.event.updated.json"));
      await publish(server, "news.service.event.updated", "globalnews", fixture("news.service.event.updated.json"));
      await publish(server, "stock.service.event.updated", null, fixture("stock.service.event.updated.json"));
      await publish(server, "weather.service.event.updated", null, fixture("weather.service.event.updated.json"));
      // Pushes go out before the snapshot write: wait until the four snapshots are cached.
      const probe = open({ auth: { guestId: randomUUID() } });
      await probe.next("session:init");
      for (const [request, reply] of [
        ["cryptoTopMoversRequest", "cryptoTopMoversResponse"],
        ["cryptoTopCoinsRequest", "cryptoTopCoinsResponse"],
        ["stockTopPerformersRequest", "stockTopPerformersResponse"],
        ["topNewsRequest", "newsUpdate"],
      ]) {
        for (let i = 0; ; i++) {
          const at = probe.events.length;
          probe.socket.emit(request);
          if ((await probe.next(reply, { after: at })).payload.status === "success") break;
          assert.ok(i < 20, `${request} never hit the cache`);
          await sleep(100);
        }
      }
    });

    it("pushes cryptoTickerResponse exactly as expected", async () => {
      const want = expected("crypto.ticker.event.updated").emits[0];
      const got = await member.next(want.event, { after: joined });
      sameJson(got.payload, want.payload, "ticker push");
    });

    it("pushes the movers as cryptoTopMoversResponse (D2), never topMoversResponse", async () => {
      const want = expected("crypto.movers.event.updated").emits[0];
      const got = await member.next("cryptoTopMoversResponse", { after: joined });
      sameJson(got.payload, want.payload, "movers push");
      assert.ok(!member.events.some((e) => e.event === "topMoversResponse"));
    });

    for (const topic of ["crypto.topcoins.event.updated", "news.service.event.updated", "stock.service.event.updated"]) {
      it(`pushes ${topic} exactly as expected`, async () => {
        const want = expected(topic).emits[0];
        const got = await member.next(want.event, { after: joined });
        sameJson(got.payload, want.payload, `${topic} push`);
      });
    }

    it("pushes weather.Pune.update with the airQuality aliases added (D8)", async () => {
      const want = structuredClone(expected("weather.service.event.updated").emits[0]);
      const aq = want.payload.data.airQuality;
      aq.pm25 = aq.pm2_5;
      aq.usEpaIndex = aq["us-epa-index"];
      const got = await member.next(want.event, { after: joined });
      sameJson(got.payload, want.payload, "weather push");
    });

    for (const topic of ["crypto.movers.event.updated", "crypto.topcoins.event.updated", "news.service.event.updated", "stock.service.event.updated"]) {
      it(`answers ${expected(topic).thenOnRequest.clientEmits} from the cache exactly as expected`, async () => {
        const { clientEmits, reply } = expected(topic).thenOnRequest;
        const c = open({ auth: { guestId: randomUUID() } });
        await c.next("session:init");
        c.socket.emit(clientEmits);
        const got = await c.next(reply.event);
        sameJson(got.payload, reply.payload, `${clientEmits} reply`);
      });
    }

    it("hydrates a new socket with the four snapshots, exactly like the request replies", async () => {
      const c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
      c.socket.emit("userLocationUpdate", location("Nagpur"));
      const order = ["news.service.event.updated", "crypto.movers.event.updated", "crypto.topcoins.event.updated", "stock.service.event.updated"];
      let previous = 0;
      for (const topic of order) {
        const { reply } = expected(topic).thenOnRequest;
        const got = await c.next(reply.event, { after: previous });
        sameJson(got.payload, reply.payload, `hydration of ${topic}`);
        previous = got.index;
      }
      await sleep(200);
      assert.ok(!c.events.some((e) => e.event === "cryptoTickerResponse"), "D3: tickers are not hydrated");
    });

    it("drops invalid values and keeps the good snapshot (D9)", async () => {
      const at = member.events.length;
      for (const bad of fixture("crypto.movers.event.updated.invalid.json")) {
        const body = bad.tombstone ? "" : bad.raw ?? JSON.stringify(bad.value);
        await publish(server, "crypto.movers.event.updated", null, body);
      }
      await sleep(300);
      assert.ok(!member.events.slice(at).some((e) => e.event === "cryptoTopMoversResponse"), "no push for an invalid value");
      const c = open({ auth: { guestId: randomUUID() } });
      await c.next("session:init");
      c.socket.emit("cryptoTopMoversRequest");
      const got = await c.next("cryptoTopMoversResponse");
      sameJson(got.payload, expected("crypto.movers.event.updated").thenOnRequest.reply.payload, "movers after invalid values");
    });
  });
});
