// A TCP proxy (node:net) on a free loopback port in front of one flux-bff, that reads the
// WebSocket traffic passing through it: the extension the upgrade response accepted, and per
// direction the data frames seen and how many of them had RSV1 set (a permessage-deflate
// message). The bytes are forwarded unchanged.
//
//   const sniffer = await startSniffer(server.port);
//   connect(sniffer, ...)              // sniffer.url is a server URL for connect()
//   sniffer.connections[0]             // {extensions, fromServer: {data, compressed}, fromClient: …}

import net from "node:net";

/** Counts the data frames of one direction of a WebSocket connection, after its HTTP head. */
function frameCounter(onHead) {
  const counts = { data: 0, compressed: 0 };
  let buf = Buffer.alloc(0);
  let headDone = false;
  let skip = 0; // payload bytes of the current frame still to pass
  function feed(chunk) {
    buf = Buffer.concat([buf, chunk]);
    if (!headDone) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      onHead(buf.subarray(0, end).toString("latin1"));
      buf = buf.subarray(end + 4);
      headDone = true;
    }
    for (;;) {
      if (skip > 0) {
        const n = Math.min(skip, buf.length);
        buf = buf.subarray(n);
        skip -= n;
        if (skip > 0) return;
      }
      if (buf.length < 2) return;
      const b0 = buf[0];
      const b1 = buf[1];
      let len = b1 & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        at = 10;
      }
      if (b1 & 0x80) at += 4; // masked (client frames)
      if (buf.length < at) return;
      const opcode = b0 & 0x0f;
      if (opcode === 0x1 || opcode === 0x2) {
        counts.data++;
        if (b0 & 0x40) counts.compressed++;
      }
      buf = buf.subarray(at);
      skip = len;
    }
  }
  return { counts, feed };
}

export async function startSniffer(targetPort) {
  const connections = [];
  const sockets = new Set();
  const server = net.createServer((client) => {
    const conn = { request: "", extensions: null, fromServer: null, fromClient: null };
    const up = frameCounter((head) => (conn.request = head));
    const down = frameCounter((head) => {
      const line = head.split("\r\n").find((l) => l.toLowerCase().startsWith("sec-websocket-extensions:"));
      conn.extensions = line ? line.slice(line.indexOf(":") + 1).trim() : null;
    });
    conn.fromClient = up.counts;
    conn.fromServer = down.counts;
    connections.push(conn);
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort });
    sockets.add(client);
    sockets.add(upstream);
    client.on("data", (d) => {
      up.feed(d);
      upstream.write(d);
    });
    upstream.on("data", (d) => {
      down.feed(d);
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    connections,
    /** The connections that were upgraded to WebSocket (polling requests are not counted). */
    websockets: () => connections.filter((c) => /upgrade: websocket/i.test(c.request)),
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
