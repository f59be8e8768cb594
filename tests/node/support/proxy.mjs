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
//
// Labelled clients: a client whose request line carries `chaos=<label>` in its query (give
// socket.io-client `query: { chaos: label }`) can be routed and dropped on its own:
//
//   proxy.route("c1", b.port);                     // c1's new connections go to b first
//   proxy.drop("c1");                              // c1's open connections destroyed
//   proxy.where("c1");                             // the gateway port c1 is connected to

import net from "node:net";

/** The label in an HTTP request line's query (`?chaos=x` or `&chaos=x`), or null. */
export function labelOf(head) {
  const line = head.slice(0, head.indexOf("\r\n") >>> 0).toString("latin1");
  const m = line.match(/[?&]chaos=([^&\s]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

export async function startProxy(targets = []) {
  let list = [...targets];
  let rr = 0;
  let refuseUntil = 0;
  const pairs = new Set();
  /** Accepted clients whose first bytes have not arrived yet. */
  const pending = new Set();
  const routes = new Map();
  const stats = { accepted: 0, refused: 0, failedConnects: 0, perTarget: {} };

  function destroyPending() {
    for (const client of pending) client.destroy();
    pending.clear();
  }

  function destroyPair(pair) {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  }

  function connectUpstream(client, head, label, candidates) {
    if (candidates.length === 0) {
      stats.refused++;
      client.destroy();
      return;
    }
    const [port, ...rest] = candidates;
    const upstream = net.connect({ host: "127.0.0.1", port });
    const pair = { client, upstream, port, label, connected: false };
    pairs.add(pair);
    upstream.once("connect", () => {
      pair.connected = true;
      stats.perTarget[port] = (stats.perTarget[port] ?? 0) + 1;
      if (client.destroyed) {
        destroyPair(pair);
        return;
      }
      upstream.setNoDelay(true);
      if (head) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on("error", () => {
      if (!pair.connected) {
        // This target refused (stopped replica): try the next one.
        stats.failedConnects++;
        pairs.delete(pair);
        upstream.destroy();
        if (!client.destroyed) connectUpstream(client, head, label, rest);
        return;
      }
      destroyPair(pair);
    });
    upstream.on("close", () => {
      if (pair.connected) destroyPair(pair);
    });
    client.on("close", () => destroyPair(pair));
  }

  /** The targets to try for a connection, in order. */
  function candidatesFor(label) {
    const preferred = label != null ? routes.get(label) : undefined;
    if (preferred !== undefined) return [preferred, ...list.filter((p) => p !== preferred)];
    // Round-robin start, then every other target in order (failover).
    const start = rr++ % list.length;
    return [...list.slice(start), ...list.slice(0, start)];
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
    // The first bytes (an HTTP request head) name the client's label, if any; the upstream
    // gets them before anything else.
    pending.add(client);
    client.on("close", () => pending.delete(client));
    client.once("data", (head) => {
      client.pause();
      pending.delete(client);
      if (client.destroyed) return;
      const label = labelOf(head);
      connectUpstream(client, head, label, candidatesFor(label));
    });
    client.resume();
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
    /** New connections labelled `label` try `target` first, then the other targets. */
    route(label, target) {
      routes.set(label, target);
    },
    /** The gateway port of `label`'s open connection (the last one), or null. */
    where(label) {
      let found = null;
      for (const pair of pairs) if (pair.label === label && pair.connected) found = pair.port;
      return found;
    },
    /** Destroys the open connections labelled `label`; returns how many. */
    drop(label) {
      let n = 0;
      for (const pair of [...pairs]) {
        if (pair.label === label) {
          destroyPair(pair);
          n++;
        }
      }
      return n;
    },
    /** Destroys every current connection and refuses new ones for `ms`; resolves when it accepts again. */
    async cut(ms) {
      refuseUntil = Date.now() + ms;
      destroyPending();
      for (const pair of [...pairs]) destroyPair(pair);
      await new Promise((resolve) => setTimeout(resolve, ms));
    },
    /** Destroys every current connection (no refusal period). */
    dropAll() {
      destroyPending();
      for (const pair of [...pairs]) destroyPair(pair);
    },
    async close() {
      destroyPending();
      for (const pair of [...pairs]) destroyPair(pair);
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
