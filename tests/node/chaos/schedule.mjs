// The chaos soak's schedule: a seeded PRNG and the list of faults it draws. Pure: the same
// seed and options give the same schedule, byte for byte (scheduleDigest), on any machine,
// whatever happens while it runs. Timing jitter during the run changes when a fault's
// effects land, never which faults are drawn.

import { createHash } from "node:crypto";

/** sfc32 seeded through splitmix32: small, fast, and good enough for a test schedule. */
export function prng(seed) {
  let s = typeof seed === "number" ? seed >>> 0 : hashSeed(String(seed));
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  const next = () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t / 4294967296;
  };
  for (let i = 0; i < 12; i++) next();
  const rng = {
    /** A float in [0, 1). */
    next,
    /** An integer in [lo, hi]. */
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    /** true with probability p. */
    chance: (p) => next() < p,
    pick: (list) => list[Math.floor(next() * list.length)],
    /** A shuffled copy. */
    shuffle(list) {
      const out = [...list];
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j], out[i]];
      }
      return out;
    },
    /** A version-4-shaped UUID from the stream (deterministic guest ids). */
    uuid() {
      const hex = Array.from({ length: 32 }, () => Math.floor(next() * 16).toString(16));
      hex[12] = "4";
      hex[16] = "89ab"[Math.floor(next() * 4)];
      const h = hex.join("");
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
  };
  return rng;
}

function hashSeed(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h;
}

/** Every kind of fault, in the order the report lists them. */
export const FAULT_KINDS = [
  "broker_term", // Kafka broker SIGTERM, down for a while, started again on its data
  "broker_kill", // the same with SIGKILL
  "valkey_kill", // redis-server SIGKILL, down for a while, started again (empty)
  "replica_kill", // one gateway SIGKILL, started again on its port
  "replica_term", // one gateway SIGTERM (a rolling deploy's step), started again on its port
  "proxy_cut", // every client connection cut, new ones refused for 1-5 s
  "move_clients", // some clients' connections dropped and routed to the other replica
  "add_partition", // one partition more on an event topic
  "stall_client", // one client stops reading for a while
];

/** The event topics the soak produces to (and may add partitions to). */
export const CHAOS_TOPICS = ["crypto.ticker.event.updated", "news.service.event.updated", "stock.service.event.updated"];

export const SCHEDULE_DEFAULTS = {
  /** The first fault comes this long after the start (clients connected, streams running). */
  startMs: 6_000,
  /** No fault starts this close to the end, so that the last ones are over before it. */
  endMarginMs: 10_000,
  /** Between two groups of faults. */
  gapMs: [3_000, 7_000],
  /** A group holds two faults (at the same time) with this probability, else one. */
  pairChance: 0.35,
  /** Partitions an event topic may grow to. */
  maxPartitions: 4,
  replicas: 2,
  /**
   * How long a broker restart is assumed to take (this machine: 12–15 s after SIGKILL, Kafka
   * waits for the old broker session to expire). A fault is not drawn for a resource still
   * busy with the previous one (estimated), so faults do not queue behind the broker and the
   * broker is not down for most of a run.
   */
  brokerRestartMs: 20_000,
};

/**
 * The faults of a run: [{id, at, kind, ...parameters}], `at` in ms from the start. Kinds are
 * drawn from shuffled bags of all nine; a kind whose resource is still busy from the previous
 * fault on it (the broker restarting, a replica stopping) waits, and comes first once it is
 * free. 90 s hold every kind.
 */
export function makeSchedule(seed, { durationMs, clients, ...options }) {
  const o = { ...SCHEDULE_DEFAULTS, ...options };
  const rng = prng(`schedule:${seed}`);
  const partitions = Object.fromEntries(CHAOS_TOPICS.map((t) => [t, 1]));
  let bag = [];
  // Two faults of a group never wait for each other: not both on the broker, not both on the
  // proxy, not the same kind (two replica faults hit both replicas).
  const resource = (kind) => ({ broker_term: "broker", broker_kill: "broker", add_partition: "broker", proxy_cut: "proxy", move_clients: "proxy" })[kind] ?? kind;
  // When each resource is free again (estimated): broker, valkey, replica<i>, proxy, c<i>.
  const busy = new Map();
  const free = (r, at) => (busy.get(r) ?? 0) <= at;
  const available = (kind, at) => {
    switch (kind) {
      case "broker_term":
      case "broker_kill":
        return free("broker", at);
      case "add_partition":
        return free("broker", at) && CHAOS_TOPICS.some((t) => partitions[t] < o.maxPartitions);
      case "valkey_kill":
        return free("valkey", at);
      case "replica_kill":
      case "replica_term":
        return [...Array(o.replicas).keys()].some((i) => free(`replica${i}`, at));
      case "proxy_cut":
        return free("proxy", at);
      default:
        return true;
    }
  };
  // Kinds drawn while their resource was busy come first once it is free again.
  const deferred = [];
  const draw = (avoid, at) => {
    const fits = (kind) => !(avoid && resource(kind) === resource(avoid)) && available(kind, at);
    const waiting = deferred.findIndex(fits);
    if (waiting >= 0) return deferred.splice(waiting, 1)[0];
    for (let tries = 0; tries < 2 * FAULT_KINDS.length; tries++) {
      if (bag.length === 0) bag = rng.shuffle(FAULT_KINDS);
      const kind = bag.shift();
      if (fits(kind)) return kind;
      if (kind === "add_partition" && !CHAOS_TOPICS.some((t) => partitions[t] < o.maxPartitions)) continue;
      if (!deferred.includes(kind)) deferred.push(kind);
    }
    return null;
  };
  const faults = [];
  let at = o.startMs;
  while (at <= durationMs - o.endMarginMs) {
    const size = rng.chance(o.pairChance) ? 2 : 1;
    let previous = null;
    for (let i = 0; i < size; i++) {
      const kind = draw(previous?.kind, at);
      if (!kind) break;
      const fault = { id: faults.length + 1, at, kind };
      switch (kind) {
        case "broker_term":
        case "broker_kill":
          fault.downMs = rng.int(1_000, 4_000);
          busy.set("broker", at + fault.downMs + o.brokerRestartMs);
          break;
        case "valkey_kill":
          fault.downMs = rng.int(1_000, 5_000);
          busy.set("valkey", at + fault.downMs + 1_000);
          break;
        case "replica_kill":
        case "replica_term":
          fault.replica = rng.int(0, o.replicas - 1);
          if (previous?.replica === fault.replica || !free(`replica${fault.replica}`, at)) fault.replica = (fault.replica + 1) % o.replicas;
          fault.downMs = rng.int(500, 3_000);
          // A SIGTERM may take the whole shutdown deadline (10 s) while the broker is down.
          busy.set(`replica${fault.replica}`, at + fault.downMs + (kind === "replica_term" ? 10_000 : 2_000));
          break;
        case "proxy_cut":
          fault.ms = rng.int(1_000, 5_000);
          busy.set("proxy", at + fault.ms);
          break;
        case "move_clients": {
          const n = rng.int(1, Math.max(1, Math.ceil(clients / 2)));
          fault.clients = rng.shuffle([...Array(clients).keys()]).slice(0, n).sort((x, y) => x - y);
          break;
        }
        case "add_partition": {
          const topic = rng.pick(CHAOS_TOPICS.filter((t) => partitions[t] < o.maxPartitions));
          partitions[topic] += 1;
          fault.topic = topic;
          fault.partitions = partitions[topic];
          busy.set("broker", at + 5_000); // Kafka's kafka-topics: a JVM start
          break;
        }
        case "stall_client":
          fault.client = rng.int(0, clients - 1);
          if (!free(`c${fault.client}`, at)) fault.client = (fault.client + 1) % clients;
          // Long enough to fill the socket buffers at the soak's rate sometimes (socketio
          // max_buffer, lagging), and past the 25 s ping interval now and then.
          fault.ms = rng.int(5_000, 30_000);
          busy.set(`c${fault.client}`, at + fault.ms);
          break;
        default:
          throw new Error(`unknown fault kind ${kind}`);
      }
      faults.push(fault);
      previous = fault;
    }
    at += rng.int(o.gapMs[0], o.gapMs[1]);
  }
  return faults;
}

/** A short hash of a schedule: the same seed and options print the same digest. */
export function scheduleDigest(faults) {
  return createHash("sha256").update(JSON.stringify(faults)).digest("hex").slice(0, 16);
}

/** One line per fault, for the report and a failure's timeline. */
export function describeFault(f) {
  const p = [];
  if (f.replica !== undefined) p.push(`replica ${f.replica}`);
  if (f.downMs !== undefined) p.push(`down ${f.downMs} ms`);
  if (f.ms !== undefined) p.push(`${f.ms} ms`);
  if (f.clients) p.push(`clients ${f.clients.map((c) => `c${c}`).join(",")}`);
  if (f.client !== undefined) p.push(`client c${f.client}`);
  if (f.topic) p.push(`${f.topic} -> ${f.partitions} partitions`);
  return `#${f.id} ${f.kind}${p.length ? ` (${p.join(", ")})` : ""}`;
}
