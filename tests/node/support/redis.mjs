// A private redis-server for the real-client tests, as tests/support/redis_server.rs does for
// the Rust ones: on a free loopback port, no persistence, killed and started again on the same
// port by the test. The binary is FLUX_TEST_REDIS_SERVER or `redis-server` from PATH; when it
// is missing the test fails with the install command.

import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import os from "node:os";

import { freePort, sleep } from "./server.mjs";

const binary = process.env.FLUX_TEST_REDIS_SERVER || "redis-server";

/** Resolves true once `PING` on 127.0.0.1:port answers `+PONG`. */
function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let got = "";
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.on("error", () => done(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      got += d;
      if (got.includes("\r\n")) done(got.startsWith("+PONG"));
    });
  });
}

/** Starts redis-server; resolves {port, url, kill(), start(), stop()}. */
export async function startRedis() {
  const probe = spawnSync(binary, ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    throw new Error(`redis-server is needed ('${binary} --version' failed): install it with 'apt-get install -y redis-server' or set FLUX_TEST_REDIS_SERVER`);
  }
  const port = await freePort();
  let child = null;
  let exited = null;
  let output = "";

  async function start() {
    const t = Date.now();
    exited = null;
    output = "";
    child = spawn(
      binary,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", os.tmpdir()],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child.stdout.on("data", (d) => (output = (output + d).slice(-4000)));
    child.stderr.on("data", (d) => (output = (output + d).slice(-4000)));
    const me = child;
    me.on("exit", (code, signal) => {
      if (child === me) exited = { code, signal };
    });
    for (;;) {
      if (exited) throw new Error(`redis-server exited at start-up on ${port} (${JSON.stringify(exited)}):\n${output}`);
      if (await ping(port)) return Date.now() - t;
      if (Date.now() - t > 10_000) throw new Error(`redis-server did not answer PING on ${port} within 10 s:\n${output}`);
      await sleep(50);
    }
  }

  /** SIGKILL (every connection drops at once); resolves once it exited. */
  async function kill(signal = "SIGKILL") {
    if (!child || exited) return;
    const me = child;
    const done = new Promise((resolve) => me.once("exit", resolve));
    me.kill(signal);
    await done;
  }

  await start();
  return { port, url: `redis://127.0.0.1:${port}`, start, kill, stop: () => kill("SIGKILL") };
}
