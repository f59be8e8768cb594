// A TCP proxy (node:net) on a free loopback port in front of one or more flux-bff gateways,
// to cut clients off (a network blip) and to move them between replicas.
//
//   const proxy = await startProxy([a.port]);      // single mode: every connection to a
//   proxy.setTarget(b.port);                       // new connections go to b from now on
//   await proxy.cut(5000);                         // every open pair destroyed; new ones
//                                                  // refused (reset at accept) for 5 s
//   proxy.setTargets([a.port, b.port]);            // failover mode: round-robin over the
//                                                  // targets, a refused connect tries the next
//   connect(proxy, ...)                            // proxy.url is a server URL for connect()

import net from "node:net";

export async function startProxy(targets = []) {
  let list = [...targets];
  let rr = 0;
  let refuseUntil = 0;
  const pairs = new Set();
  const stats = { accepted: 0, refused: 0, failedConnects: 0, perTarget: {} };

  function destroyPair(pair) {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  }

  function connectUpstream(client, candidates) {
    if (candidates.length === 0) {
      stats.refused++;
      client.destroy();
      return;
    }
    const [port, ...rest] = candidates;
    const upstream = net.connect({ host: "127.0.0.1", port });
    const pair = { client, upstream, port };
    pairs.add(pair);
    let connected = false;
    upstream.once("connect", () => {
      connected = true;
      stats.perTarget[port] = (stats.perTarget[port] ?? 0) + 1;
      if (client.destroyed) {
        destroyPair(pair);
        return;
      }
      upstream.setNoDelay(true);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on("error", () => {
      if (!connected) {
        // This target refused (stopped replica): try the next one.
        stats.failedConnects++;
        pairs.delete(pair);
        upstream.destroy();
        if (!client.destroyed) connectUpstream(client, rest);
        return;
      }
      destroyPair(pair);
    });
    upstream.on("close", () => {
      if (connected) destroyPair(pair);
    });
    client.on("close", () => destroyPair(pair));
  }

  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    client.on("error", () => {});
    client.setNoDelay(true);
    if (Date.now() < refuseUntil || list.length === 0) {
      stats.refused++;
      client.resetAndDestroy?.() ?? client.destroy();
      return;
    }
    stats.accepted++;
    // Round-robin start, then every other target in order (failover).
    const start = rr++ % list.length;
    const candidates = [...list.slice(start), ...list.slice(0, start)];
    connectUpstream(client, candidates);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats,
    /** Open client connections. */
    connections: () => pairs.size,
    targets: () => [...list],
    /** New connections go to `port` only (existing ones stay where they are). */
    setTarget(target) {
      list = [target];
    },
    /** New connections go round-robin over `targets`, skipping one whose connect fails. */
    setTargets(targetPorts) {
      list = [...targetPorts];
    },
    /** Destroys every current connection and refuses new ones for `ms`; resolves when it accepts again. */
    async cut(ms) {
      refuseUntil = Date.now() + ms;
      for (const pair of [...pairs]) destroyPair(pair);
      await new Promise((resolve) => setTimeout(resolve, ms));
    },
    /** Destroys every current connection (no refusal period). */
    dropAll() {
      for (const pair of [...pairs]) destroyPair(pair);
    },
    async close() {
      for (const pair of [...pairs]) destroyPair(pair);
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
