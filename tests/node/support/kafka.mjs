// Apache Kafka for the real-client tests: a single-node KRaft broker started through
// scripts/kafka.sh on a free loopback port in a temp dir, a console producer fed one JSON
// record per stdin line, and a ticker stream (10 records/s, a sequence number in each).

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { fixture, freePort, repo, sleep } from "./server.mjs";

const script = path.join(repo, "scripts/kafka.sh");
export const TICKER_TOPIC = "crypto.ticker.event.updated";

/** Where scripts/kafka.sh keeps the broker's jars (same defaults as the script). */
function kafkaLibs() {
  const version = process.env.KAFKA_VERSION || "4.1.0";
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  const home = process.env.FLUX_KAFKA_HOME || path.join(cache, "flux-bff", `kafka-${version}`);
  return { version, libs: path.join(home, "libs") };
}

/** Fails, naming the cause, when java or the broker's jars are missing. */
function checkPrerequisites() {
  const java = process.env.JAVA || "java";
  const probe = spawnSync(java, ["-version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    throw new Error(
      `Kafka tests need java (JDK 17+): '${java} -version' failed (${probe.error?.message ?? `exit ${probe.status}`}); ` +
        "install it (apt-get install -y openjdk-17-jre-headless) or set JAVA",
    );
  }
  const { version, libs } = kafkaLibs();
  if (!fs.existsSync(path.join(libs, ".complete"))) {
    throw new Error(`Apache Kafka ${version} jars are missing in ${libs}: run 'bash scripts/kafka.sh fetch' first`);
  }
}

/** Runs a command to completion; resolves {code, stdout, stderr}. */
function run(cmd, args, { timeout = 120_000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: repo, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderr: `${stderr}${e.message}` });
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}

const tail = (text, lines = 30) => text.split("\n").slice(-lines).join("\n");
function logTail(file, lines = 30) {
  try {
    return tail(fs.readFileSync(file, "utf8"), lines);
  } catch {
    return `(no ${file})`;
  }
}

/** Whether process `pid` is gone (or a zombie nobody reaped yet). */
function gone(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/**
 * Starts a broker; resolves {address, port, dir, pid(), stop(), createTopic(name),
 * alterPartitions(topic, n), kill(signal), start(), consume(options), logTail()}.
 * `address` is what KAFKA_BROKER_ADDRESS takes. `kill` and `start` stop and start the same
 * broker (same port, same data directory: a restart keeps its data).
 */
export async function startKafka({ port: fixedPort } = {}) {
  checkPrerequisites();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flux-bff-kafka-"));
  const port = fixedPort ?? (await freePort());
  const pidFile = path.join(dir, "broker.pid");
  async function start() {
    const started = Date.now();
    const r = await run("bash", [script, "start", dir, String(port)]);
    if (r.code !== 0) {
      const stillUp = fs.existsSync(pidFile);
      if (stillUp) await run("bash", [script, "stop", dir]);
      throw new Error(
        `Kafka broker did not start on 127.0.0.1:${port} (kafka.sh start exited ${r.code}; the port may have been taken meanwhile):\n` +
          `${tail(r.stderr)}\n--- ${dir}/broker.log:\n${logTail(path.join(dir, "broker.log"))}`,
      );
    }
    return Date.now() - started;
  }
  const ms = await start();
  const address = `127.0.0.1:${port}`;
  console.log(`kafka: broker on ${address} in ${ms} ms (dir ${dir})`);
  let stopped = false;
  const pid = () => {
    try {
      return Number(fs.readFileSync(pidFile, "utf8").trim()) || null;
    } catch {
      return null;
    }
  };
  const topics = (...args) => run("bash", [script, "topics", "--bootstrap-server", address, ...args]);
  return {
    address,
    port,
    dir,
    pid,
    logTail: () => logTail(path.join(dir, "broker.log")),
    /** Creates a topic (1 partition) unless it exists; `configs` are topic configs ("k=v"). */
    async createTopic(topic, partitions = 1, configs = []) {
      const c = await topics("--create", "--if-not-exists", "--topic", topic, "--partitions", String(partitions), "--replication-factor", "1", ...configs.flatMap((k) => ["--config", k]));
      if (c.code !== 0) {
        throw new Error(`creating topic ${topic} on ${address} failed (exit ${c.code}):\n${tail(c.stderr)}\n--- broker log:\n${logTail(path.join(dir, "broker.log"))}`);
      }
    },
    /** Grows `topic` to `partitions` partitions. */
    async alterPartitions(topic, partitions) {
      const c = await topics("--alter", "--topic", topic, "--partitions", String(partitions));
      if (c.code !== 0) {
        throw new Error(`adding partitions to ${topic} on ${address} failed (exit ${c.code}):\n${tail(c.stderr)}`);
      }
    },
    /**
     * Sends `signal` to the broker and resolves once it is gone (SIGKILL after `timeoutMs`),
     * with how long it took.
     */
    async kill(signal = "SIGTERM", timeoutMs = 20_000) {
      const p = pid();
      if (!p) throw new Error(`no broker running in ${dir}`);
      const t = Date.now();
      try {
        process.kill(p, signal);
      } catch {
        // already gone
      }
      while (!gone(p)) {
        if (Date.now() - t > timeoutMs) {
          try {
            process.kill(p, "SIGKILL");
          } catch {
            // gone meanwhile
          }
        }
        await sleep(50);
      }
      fs.rmSync(pidFile, { force: true });
      return Date.now() - t;
    },
    /** Starts the broker again (same port and data); resolves with how long it took. */
    start,
    /**
     * Reads every record of the topics matching `include` (a Java regex) from the beginning
     * with Kafka's console consumer, until none came for `idleMs`. Resolves with
     * [{partition, offset, timestamp, headers: {name: value}, key, value}] (topic order
     * unknown: Kafka's formatter cannot print it).
     */
    consume: (include, options) => consume(address, include, options),
    async stop() {
      if (stopped) return;
      stopped = true;
      const s = await run("bash", [script, "stop", dir]);
      if (s.code !== 0) throw new Error(`kafka.sh stop ${dir} failed: ${s.stderr}`);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function consume(address, include, { idleMs = 8_000, timeout = 180_000 } = {}) {
  const r = await run(
    "bash",
    [
      script, "tool", "org.apache.kafka.tools.consumer.ConsoleConsumer",
      "--bootstrap-server", address,
      "--include", include,
      "--from-beginning",
      "--timeout-ms", String(idleMs),
      "--consumer-property", "max.poll.records=5000",
      "--property", "print.partition=true",
      "--property", "print.offset=true",
      "--property", "print.timestamp=true",
      "--property", "print.headers=true",
      "--property", "print.key=true",
      "--property", "key.separator=\t",
      "--property", "headers.separator=,",
      "--property", "null.literal=<null>",
    ],
    { timeout },
  );
  const records = [];
  for (const line of r.stdout.split("\n")) {
    // CreateTime:<ms>\tPartition:<p>\tOffset:<o>\t<h1:v1,h2:v2|NO_HEADERS>\t<key>\t<value>
    // (LogAppendTime:<ms> for a topic with message.timestamp.type=LogAppendTime)
    const m = line.match(/^(?:CreateTime|LogAppendTime):(\d+)\tPartition:(\d+)\tOffset:(\d+)\t([^\t]*)\t([^\t]*)\t(.*)$/);
    if (!m) continue;
    const headers = {};
    if (m[4] !== "NO_HEADERS") {
      for (const h of m[4].split(",")) {
        const i = h.indexOf(":");
        if (i > 0) headers[h.slice(0, i)] = h.slice(i + 1);
      }
    }
    records.push({ timestamp: Number(m[1]), partition: Number(m[2]), offset: Number(m[3]), headers, key: m[5], value: m[6] });
  }
  if (r.code !== 0 && records.length === 0) {
    throw new Error(`the console consumer of ${include} failed (exit ${r.code}):\n${tail(r.stderr)}`);
  }
  return records;
}

/**
 * A long-running Kafka console producer on `topic`: send(value) writes one record (JSON
 * line) to its stdin; records go out one by one as they arrive (--sync, linger.ms=0).
 * Resolves {send, stop, output(), exited()} once the JVM runs (it reads stdin from the start).
 * Options: `keyed` (send(value, key) gives each record a key), `producerProps` (more
 * `--producer-property` values), `args` (more console-producer arguments).
 */
export async function startProducer(kafka, topic = TICKER_TOPIC, { keyed = false, producerProps = [], args = [] } = {}) {
  const child = spawn(
    "bash",
    [
      script, "tool", "org.apache.kafka.tools.ConsoleProducer",
      "--bootstrap-server", kafka.address,
      "--topic", topic,
      "--sync",
      "--producer-property", "linger.ms=0",
      ...(producerProps.some((p) => p.startsWith("acks=")) ? [] : ["--producer-property", "acks=1"]),
      "--producer-property", "max.block.ms=20000",
      ...producerProps.flatMap((p) => ["--producer-property", p]),
      ...(keyed ? ["--property", "parse.key=true", "--property", "key.separator=\t"] : []),
      ...args,
    ],
    { cwd: repo, stdio: ["pipe", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout.on("data", (d) => (output = tail(output + d, 50)));
  child.stderr.on("data", (d) => (output = tail(output + d, 50)));
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));
  child.stdin.on("error", () => {}); // reported through `exited`
  await sleep(300);
  if (exited) {
    throw new Error(`the Kafka console producer exited at start (${JSON.stringify(exited)}):\n${output}`);
  }
  return {
    output: () => output,
    exited: () => exited,
    send(value, key) {
      if (exited) {
        throw new Error(`the Kafka console producer has exited (${JSON.stringify(exited)}):\n${output}\n--- broker log:\n${kafka.logTail()}`);
      }
      const line = typeof value === "string" ? value : JSON.stringify(value);
      if (line.includes("\n")) throw new Error("a console-producer record must be one line");
      if (keyed && (key == null || /[\t\n]/.test(key))) throw new Error(`a keyed record needs a key without tabs: ${key}`);
      child.stdin.write(keyed ? `${key}\t${line}\n` : `${line}\n`);
    },
    async stop(timeoutMs = 10_000) {
      if (exited) return exited;
      const done = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
      child.stdin.end(); // EOF: it flushes and exits
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const result = await done;
      clearTimeout(timer);
      return result;
    },
  };
}

/** A ticker record (fixtures/crypto.ticker.event.updated.json) carrying `seq` as its price. */
export function tickerRecord(seq, productId = "BTC-USD") {
  const t = fixture("crypto.ticker.event.updated.json");
  t.ts = Date.now();
  t.data.product_id = productId;
  t.data.price = String(seq);
  return t;
}

/** The sequence number in a cryptoTickerResponse payload, or null for another ticker. */
export function tickerSeq(payload) {
  const t = payload?.data?.data ?? payload?.data;
  if (!t || t.product_id !== "BTC-USD") return null;
  const n = Number(t.price);
  return Number.isInteger(n) ? n : null;
}

let nextSeq = 1; // global across streams: a record of an earlier stream is never taken for a later one

/**
 * Produces a ticker every `intervalMs` (10/s by default) through `producer`, each with the
 * next sequence number. Returns {firstSeq, lastSeq(), count(), stop()}; `stop` resolves with
 * the last seq produced.
 */
export function tickerStream(producer, { intervalMs = 100 } = {}) {
  const firstSeq = nextSeq;
  let last = firstSeq - 1;
  let failure = null;
  const tick = () => {
    try {
      const seq = nextSeq++;
      producer.send(tickerRecord(seq));
      last = seq;
    } catch (e) {
      failure = e;
      clearInterval(timer);
    }
  };
  tick();
  const timer = setInterval(tick, intervalMs);
  return {
    firstSeq,
    lastSeq: () => last,
    count: () => last - firstSeq + 1,
    async stop() {
      clearInterval(timer);
      if (failure) throw failure;
      return last;
    },
  };
}
