// Helpers of the real-client tests: spawn a flux-bff binary on a free loopback port (embedded
// mode) and connect official socket.io-client sockets that record every event they receive.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
/** The binary under test: FLUX_BFF_BIN, else <repo>/target/debug/flux-bff. */
export const binary = process.env.FLUX_BFF_BIN || path.join(repo, "target/debug/flux-bff");

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Promise.all for starting servers side by side: resolves their values in order, but when one
 * start fails it waits for the others to settle before it throws the first failure. With
 * Promise.all a failed start returned while the others were still coming up, so a server that
 * came up afterwards was never assigned, or registered only after the cleanup hooks had run,
 * and outlived the test. Register each server as soon as it is up (in its own `.then`, or
 * inside the start helper), so that cleanup finds everything that started.
 */
export async function settleAll(promises) {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  return results.map((r) => r.value);
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts flux-bff in embedded mode with `env` on top of a clean environment, waits for
 * /healthz and returns {url, port, pid, logs(), stop(), kill(signal), exited, exitInfo()}.
 * `stop` sends SIGTERM (SIGKILL after 5 s); `kill(signal)` sends one signal and resolves with
 * the exit once the process is gone (SIGKILL after `timeoutMs`).
 * Options: `port` (listen on this one instead of a free one: a restart on the same address),
 * `logFile` (append the output there too and keep only its last 256 KiB in memory).
 */
export async function startServer(env = {}, { port: fixedPort, logFile } = {}) {
  if (!fs.existsSync(binary)) {
    throw new Error(
      `flux-bff binary not found at ${binary}: build it with 'cargo build' (or set FLUX_BFF_BIN to its path)`,
    );
  }
  const port = fixedPort ?? (await freePort());
  const base = { ...process.env };
  // Nothing from the caller's environment may switch the binary out of embedded mode.
  for (const k of Object.keys(base)) {
    if (k.startsWith("FLUX_") || ["KAFKA_BROKER_ADDRESS", "SERVER_PORT", "VALKEY_HOST", "VALKEY_PORT", "RUST_LOG"].includes(k)) {
      delete base[k];
    }
  }
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "flux-bff-test-")); // no stray flux.toml
  const child = spawn(binary, [], {
    cwd,
    env: {
      ...base,
      FLUX_HTTP__HOST: "127.0.0.1",
      FLUX_HTTP__PORT: String(port),
      FLUX_LOG__FORMAT: "json",
      FLUX_LOG__LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const log = logFile ? fs.createWriteStream(logFile, { flags: "a" }) : null;
  const keep = 256 * 1024;
  const append = (d) => {
    log?.write(d);
    output += d;
    if (log && output.length > 2 * keep) output = output.slice(-keep);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  let exited = null;
  const exit = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      exited = { code, signal, at: Date.now() };
      log?.end();
      fs.rmSync(cwd, { recursive: true, force: true });
      resolve(exited);
    }),
  );

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) {
      throw new Error(`flux-bff exited during start-up (${JSON.stringify(exited)}):\n${output}`);
    }
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`flux-bff did not answer /healthz on ${url} within 20 s:\n${output}`);
    }
    await sleep(50);
  }

  async function kill(signal, timeoutMs = 5_000) {
    if (exited) return exited;
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const result = await exit;
    clearTimeout(timer);
    return result;
  }

  return {
    url,
    port,
    pid: child.pid,
    logs: () => output,
    /** Resolves with {code, signal, at} when the process exits, however it ends. */
    exited: exit,
    /** The exit, or null while it runs. */
    exitInfo: () => exited,
    kill,
    stop: () => kill("SIGTERM"),
  };
}

/**
 * Resolves once `server` answers /readyz with 200; after `timeout` ms throws with the last
 * answer, the gateway's logs and `extra()` (e.g. the broker's log).
 */
export async function waitReady(server, { timeout = 30_000, extra = () => "" } = {}) {
  const deadline = Date.now() + timeout;
  let last = "no answer";
  for (;;) {
    try {
      const r = await fetch(`${server.url}/readyz`);
      if (r.ok) return;
      last = `${r.status} ${await r.text()}`;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) {
      throw new Error(`flux-bff on ${server.url} not ready within ${timeout} ms (/readyz: ${last}):\n${server.logs()}${extra()}`);
    }
    await sleep(100);
  }
}

/** Appends a record to the embedded bus through the admin hook (FLUX_ADMIN__PUBLISH=true). */
export async function publish(server, topic, key, value) {
  const q = new URLSearchParams({ topic });
  if (key != null) q.set("key", key);
  const body = typeof value === "string" ? value : JSON.stringify(value);
  const r = await fetch(`${server.url}/admin/publish?${q}`, { method: "POST", body });
  if (!r.ok) throw new Error(`POST /admin/publish?${q} answered ${r.status}: ${await r.text()}`);
}

/**
 * Connects a socket the way the real frontend does (websocket transport, auth.guestId) and
 * records every event. `next(match)` resolves with the first recorded event (from index
 * `after`) whose name equals `match` or for which `match(event)` is true.
 */
export function connect(server, { auth, ...options } = {}) {
  const socket = io(server.url, {
    path: "/socket.io",
    transports: ["websocket"],
    ...(auth === undefined ? {} : { auth }),
    forceNew: true,
    reconnection: false,
    ...options,
  });
  const events = [];
  const waiters = new Set();
  socket.onAny((event, ...args) => {
    const e = { event, payload: args[0], args, index: events.length };
    events.push(e);
    for (const w of [...waiters]) w(e);
  });
  const matches = (match, e) => (typeof match === "function" ? match(e) : e.event === match);

  function next(match, { timeout = 5_000, after = 0 } = {}) {
    const found = events.slice(after).find((e) => matches(match, e));
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        const seen = events.map((e) => e.event).join(", ");
        reject(new Error(`no '${typeof match === "function" ? match.toString() : match}' event within ${timeout} ms (received: ${seen || "nothing"})`));
      }, timeout);
      const waiter = (e) => {
        if (e.index >= after && matches(match, e)) {
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(e);
        }
      };
      waiters.add(waiter);
    });
  }

  /** Resolves once the socket is connected (rejects on connect_error). */
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  });

  return { socket, events, next, connected, close: () => socket.disconnect() };
}

/** A valid location object, as the frontend sends it (the gateway forwards only these). */
export function location(city, extra = {}) {
  return { city, region: `${city} Region`, country: "IN", lat: 18.5196, lon: 73.8553, ip: "203.0.113.7", ...extra };
}

/** The JSON text of a fixture value, re-serialised compactly like its producer sends it. */
export function fixture(name) {
  return JSON.parse(fs.readFileSync(path.join(repo, "fixtures", name), "utf8"));
}
