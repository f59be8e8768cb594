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

/**
 * Starts a broker; resolves {address, port, dir, stop(), createTopic(name), logTail()}.
 * `address` is what KAFKA_BROKER_ADDRESS takes.
 */
export async function startKafka() {
  checkPrerequisites();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flux-bff-kafka-"));
  const port = await freePort();
  const started = Date.now();
  const r = await run("bash", [script, "start", dir, String(port)]);
  if (r.code !== 0) {
    const stillUp = fs.existsSync(path.join(dir, "broker.pid"));
    if (stillUp) await run("bash", [script, "stop", dir]);
    throw new Error(
      `Kafka broker did not start on 127.0.0.1:${port} (kafka.sh start exited ${r.code}; the port may have been taken meanwhile):\n` +
        `${tail(r.stderr)}\n--- ${dir}/broker.log:\n${logTail(path.join(dir, "broker.log"))}`,
    );
  }
  const address = `127.0.0.1:${port}`;
  console.log(`kafka: broker on ${address} in ${Date.now() - started} ms (dir ${dir})`);
  let stopped = false;
  return {
    address,
    port,
    dir,
    logTail: () => logTail(path.join(dir, "broker.log")),
    /** Creates a topic (1 partition) unless it exists. */
    async createTopic(topic, partitions = 1) {
      const c = await run("bash", [
        script, "topics", "--bootstrap-server", address, "--create", "--if-not-exists",
        "--topic", topic, "--partitions", String(partitions), "--replication-factor", "1",
      ]);
      if (c.code !== 0) {
        throw new Error(`creating topic ${topic} on ${address} failed (exit ${c.code}):\n${tail(c.stderr)}\n--- broker log:\n${logTail(path.join(dir, "broker.log"))}`);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      const s = await run("bash", [script, "stop", dir]);
      if (s.code !== 0) throw new Error(`kafka.sh stop ${dir} failed: ${s.stderr}`);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A long-running Kafka console producer on `topic`: send(value) writes one record (JSON
 * line) to its stdin; records go out one by one as they arrive (--sync, linger.ms=0).
 * Resolves {send, stop, output()} once the JVM runs (it reads stdin from the start).
 */
export async function startProducer(kafka, topic = TICKER_TOPIC) {
  const child = spawn(
    "bash",
    [
      script, "tool", "org.apache.kafka.tools.ConsoleProducer",
      "--bootstrap-server", kafka.address,
      "--topic", topic,
      "--sync",
      "--producer-property", "linger.ms=0",
      "--producer-property", "acks=1",
      "--producer-property", "max.block.ms=20000",
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
    send(value) {
      if (exited) {
        throw new Error(`the Kafka console producer has exited (${JSON.stringify(exited)}):\n${output}\n--- broker log:\n${kafka.logTail()}`);
      }
      const line = typeof value === "string" ? value : JSON.stringify(value);
      if (line.includes("\n")) throw new Error("a console-producer record must be one line");
      child.stdin.write(`${line}\n`);
    },
    async stop() {
      if (exited) return exited;
      const done = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
      child.stdin.end(); // EOF: it flushes and exits
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
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
