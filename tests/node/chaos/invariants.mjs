// The chaos soak's invariants, as pure functions over what the driver recorded, so that they
// can be tested on their own (chaos-invariants.test.mjs).
//
// A stream is one sequence of numbered records: `ticker:<product>` (one per product: the
// record key, so one partition at a time and Kafka's order), `news` and `stocks`. A client's
// room events of a stream must hold every number the log holds from the first one it received
// on, exactly once, in order. Exceptions, each counted apart and never a violation:
//
//   replay_conflated   A ticker left out of a recovery replay over socketio.replay_budget
//                      (D26): the gap spans a recovered reconnect, the missing ticker was
//                      produced before that reconnect, the newer one of its product that
//                      replaced it was in the replay (its offset's emit time is before the
//                      reconnect, give or take REPLAY_SLACK_MS), and the gateway counted
//                      flux_recovery_conflated_events_total.
//   refused:<reason>   Events missed across a refused recovery (the client presented a session
//                      id and got a new one, recovered=false; reason from the gateway's
//                      flux_recovery_refused_total). The client may miss exactly the events of
//                      its rooms after the last one it had received before the disconnect and
//                      emitted before it was in its rooms again. The join is bounded by the
//                      arrival of the first event after that connect (hydration or room), so a
//                      missing event appended to the log after that arrival is lost, whatever
//                      the refusal: a record is emitted after it is appended.
//   refused:ahead_duplicate
//                      Events received again on the normal connection a recovery refused as
//                      `ahead` gave (D26): that replica had not read as far as the client's
//                      offset, and its room emits then repeat what the client got before from
//                      the replica further ahead. Only a copy on that connection (or a later
//                      one) of a number first received on a connection before it; with several
//                      such refusals, the latest one at or before the copy's connection counts.
//   lagging_conflated  A ticker replaced by a newer one of its product while the client did not
//                      read (socketio.max_buffer: tickers to a lagging socket are conflated;
//                      flux_fanout_conflated_total), produced within a stall of that client.
//   consumer_conflated A ticker superseded in the consumer's batch while it was behind
//                      (socketio.conflate_after; flux_events_conflated_total grew between the
//                      ticker's production and the arrival of the newer one that replaced it).
//   lagging_duplicate /
//   lagging_reorder    D26: "a socket that lagged (its backlog reorders tickers) may, after a
//                      second reconnect, get a ticker twice": tickers only, client stalled before.
//   partition_move_reorder
//                      A record received after a greater one of its stream that the log holds
//                      in another partition: a partition added to the topic moved the key, and
//                      Kafka orders records within a partition only.
//
// Anything else missing is lost; anything received more often than the log holds it is
// duplicated; a number received after a greater one of its stream is out of order.

/**
 * The replay runs right after the CONNECT reply is sent, under the journal's lock: an event
 * journaled in that instant is replayed although its emit time is not before the client's
 * connect event. Loopback and one event loop between them: a few ms.
 */
export const REPLAY_SLACK_MS = 50;

/** The stream of a room event, and its sequence number, or null. */
export function streamOf(event, payload) {
  if (event === "cryptoTickerResponse") {
    const t = payload?.data?.data;
    if (t && Number.isInteger(t.sequence) && typeof t.product_id === "string") return { stream: `ticker:${t.product_id}`, seq: t.sequence };
    return null;
  }
  if (event === "newsUpdate") {
    const id = Array.isArray(payload?.data) ? payload.data[0]?.id : undefined;
    const m = typeof id === "string" ? id.match(/^seq-(\d+)$/) : null;
    return m ? { stream: "news", seq: Number(m[1]) } : null;
  }
  if (event === "stockTopPerformersResponse") {
    const s = payload?.data?.meta?.sequence;
    return Number.isInteger(s) ? { stream: "stocks", seq: s } : null;
  }
  return null;
}

/**
 * The emit time (ms) in a room event's offset argument (D26: base64url of a version byte 1
 * and varints, the first being the time the emitting replica emitted it, or journaled it when
 * it read its window back), or null. A replayed event keeps the time of its first emit.
 */
export function offsetTime(offset) {
  if (typeof offset !== "string") return null;
  let bytes;
  try {
    bytes = Buffer.from(offset, "base64url");
  } catch {
    return null;
  }
  if (bytes[0] !== 1) return null;
  let v = 0;
  let scale = 1;
  for (let i = 1; i < Math.min(bytes.length, 11); i++) {
    v += (bytes[i] & 0x7f) * scale;
    if ((bytes[i] & 0x80) === 0) return v;
    scale *= 128;
  }
  return null;
}

export const isTickerStream = (stream) => stream.startsWith("ticker:");

/**
 * Checks one client's streams against the log.
 *
 * client: {name, connects: [{at, recovered, attempted, reason}], stalls: [{from, to}],
 *          streams: {stream: [{seq, at, conn, emitAt}]}, firstAt: {conn: ms} (first hydration
 *          or room event of each connection), roomAt: {conn: ms} (first room event)}
 * truth:  {stream: Map(seq -> records in the log)}
 * sendAt: {stream: Map(seq -> ms)}: the earliest the record could be emitted (the later of
 *         its write to the producer and its LogAppendTime)
 * gateway: {recoveryConflated, laggingConflated, consumerConflations: [{at, delta, port}]}
 * partitions: {stream: Map(seq -> partition)} from the log, or null
 *
 * Returns {checked, received, lost: [...], duplicated: [...], outOfOrder: [...],
 * foreign: [...], exceptions: {kind: n}}; each finding {stream, seq, why}.
 */
export function checkClient(client, truth, sendAt, gateway = {}, partitions = null) {
  const result = { checked: 0, received: 0, lost: [], duplicated: [], outOfOrder: [], foreign: [], exceptions: {} };
  const except = (kind) => (result.exceptions[kind] = (result.exceptions[kind] ?? 0) + 1);
  const stalled = (from, to) => client.stalls.some((s) => s.from <= to && (s.to ?? Infinity) + 2_000 >= from);
  const stalledBefore = (t) => client.stalls.some((s) => s.from <= t);
  for (const [stream, events] of Object.entries(client.streams)) {
    if (events.length === 0) continue;
    const log = truth[stream] ?? new Map();
    const sent = sendAt[stream] ?? new Map();
    const ticker = isTickerStream(stream);
    result.received += events.length;
    const first = events[0].seq;
    // Received counts and order.
    const count = new Map();
    const firstConn = new Map(); // seq -> the connection it first arrived on
    // The connections a recovery refused as `ahead`, and the latest of them at or before a
    // connection (-1: none).
    const aheadRefused = client.connects.flatMap((c, i) => (c.attempted && !c.recovered && c.reason === "ahead" ? [i] : []));
    const behindSince = (conn) => aheadRefused.findLast((i) => i <= conn) ?? -1;
    let max = -Infinity;
    for (const e of events) {
      if (!firstConn.has(e.seq)) firstConn.set(e.seq, e.conn);
      const n = (count.get(e.seq) ?? 0) + 1;
      count.set(e.seq, n);
      const want = log.get(e.seq) ?? 0;
      if (want === 0) {
        result.foreign.push({ stream, seq: e.seq, why: "received a number the log does not hold", at: e.at, conn: e.conn });
      } else if (n > want) {
        if (ticker && stalledBefore(e.at)) except("lagging_duplicate");
        else if (firstConn.get(e.seq) < behindSince(e.conn)) except("refused:ahead_duplicate");
        else result.duplicated.push({ stream, seq: e.seq, why: `received ${n} times (log holds it ${want} time${want > 1 ? "s" : ""})`, at: e.at, conn: e.conn });
      } else if (e.seq < max) {
        const moved = partitions?.[stream] && partitions[stream].get(e.seq) !== partitions[stream].get(max);
        if (moved) except("partition_move_reorder");
        else if (ticker && stalledBefore(e.at)) except("lagging_reorder");
        else result.outOfOrder.push({ stream, seq: e.seq, why: `after ${max}`, at: e.at, conn: e.conn });
      }
      if (e.seq > max) max = e.seq;
    }
    // Every number of the log from the first received on.
    const expected = [...log.keys()].filter((s) => s >= first).sort((a, b) => a - b);
    result.checked += expected.reduce((n, s) => n + log.get(s), 0);
    const received = [...count.keys()].sort((a, b) => a - b);
    // Neighbours of a missing number among the received ones: the event before and after it
    // (by number), with the connection each arrived on.
    const at = new Map(); // seq -> first arrival {at, conn}
    for (const e of events) if (!at.has(e.seq)) at.set(e.seq, e);
    let r = 0;
    for (const seq of expected) {
      while (r < received.length && received[r] < seq) r++;
      if (received[r] === seq) continue;
      const prev = r > 0 ? at.get(received[r - 1]) : null;
      const next = r < received.length ? at.get(received[r]) : null;
      const why = classifyMissing({ seq, stream, ticker, prev, next, sent, client, gateway, stalled });
      if (why.exception) except(why.exception);
      else result.lost.push({ stream, seq, why: why.lost, prevConn: prev?.conn, nextConn: next?.conn });
    }
  }
  return result;
}

function classifyMissing({ seq, ticker, prev, next, sent, client, gateway, stalled }) {
  const sentAt = sent.get(seq);
  if (sentAt === undefined) return { lost: "in the log but never written by this driver" };
  if (!next) return { lost: "never received (after the last event the client got)" };
  const fromConn = prev ? prev.conn : -1;
  let lost = `gap within connection #${next.conn + 1}`;
  if (next.conn !== fromConn) {
    // The stream resumed on a later connection: what happened at the connects in between.
    const connects = client.connects.slice(fromConn + 1, next.conn + 1).map((c, i) => ({ ...c, index: fromConn + 1 + i }));
    // A refused connect explains the gap only if the client was then in its rooms and got a
    // room event (on that connection or a later one of the gap): that moved its offset past
    // the missing record. A refused connection that died before that leaves the old offset,
    // and the next recovered connect replays from it.
    const gotRoomFrom = (i) => {
      if (i === next.conn) return true;
      for (let k = i; k < next.conn; k++) if (client.roomAt?.[k] != null) return true;
      return false;
    };
    const refused = connects.find((c) => c.attempted && !c.recovered && client.firstAt[c.index] != null && sentAt < client.firstAt[c.index] && gotRoomFrom(c.index));
    if (refused) return { exception: `refused:${refused.reason ?? "unattributed"}` };
    const resumed = client.connects[next.conn];
    if (ticker && resumed.recovered && (gateway.recoveryConflated ?? 0) > 0) {
      // The newer ticker that replaced it must itself be in the replay: journaled by the time
      // the replica replayed, which is just after it sent the CONNECT reply, so its offset's
      // time is before the client's connect event or within REPLAY_SLACK_MS of it.
      const replayed = next.emitAt != null ? next.emitAt <= resumed.at + REPLAY_SLACK_MS : sent.get(next.seq) <= resumed.at;
      if (sentAt < resumed.at && replayed) return { exception: "replay_conflated" };
    }
    const kinds = connects
      .map((c) => (c.recovered ? `recovered${c.replayRefused ? ` (then a refusal, ${c.replayRefused}, counted on that replica)` : ""}` : c.attempted ? `refused (${c.reason ?? "?"}) but appended after the re-join` : "no recovery attempted"))
      .join(", ");
    lost = `missed across reconnect(s) #${connects.map((c) => c.index + 1).join(",#")}: ${kinds}`;
  }
  if (ticker) {
    if (stalled(sentAt, next.at) && (gateway.laggingConflated ?? 0) > 0) return { exception: "lagging_conflated" };
    // Superseded in the batch that emitted the newer one, by the replica the client was on
    // before or after the gap, counted by the time that one arrived (scrapes are 1 s apart).
    const replicas = new Set([client.connects[fromConn]?.replica, client.connects[next.conn]?.replica]);
    const counted = (gateway.consumerConflations ?? []).some((c) => c.at >= sentAt && c.at <= next.at + 2_000 && (c.port == null || replicas.has(c.port)));
    if (counted) return { exception: "consumer_conflated" };
  }
  return { lost };
}

/**
 * Commands: every command the gateway counted as produced is in its topic, and each client
 * update that caused one is there under one idempotency key (a retried send may land twice
 * under the same key: counted, and removed by the key as a consumer does).
 *
 * records: [{topic, headers, key, value}] of the command topics; produced: {topic: n} from
 * flux_commands_produced_total; updates: [{userId, city, at, duringFault}] sent by clients.
 */
export function checkCommands(records, produced, updates) {
  const byTopic = {};
  const violations = [];
  const weather = new Map(); // userId|city -> Set(keys)
  for (const r of records) {
    const t = (byTopic[r.topic] ??= { records: 0, keys: new Set(), missingKey: 0 });
    t.records++;
    const key = r.headers["idempotency-key"];
    if (!key) {
      t.missingKey++;
      continue;
    }
    t.keys.add(key);
    if (r.topic === "weather.service.command.fetch") {
      let v;
      try {
        v = JSON.parse(r.value);
      } catch {
        continue;
      }
      const id = `${v.userId}|${v.data?.city}`;
      if (!weather.has(id)) weather.set(id, new Set());
      weather.get(id).add(key);
    }
  }
  const topics = {};
  for (const topic of new Set([...Object.keys(byTopic), ...Object.keys(produced)])) {
    const t = byTopic[topic] ?? { records: 0, keys: new Set(), missingKey: 0 };
    const accepted = produced[topic] ?? 0;
    topics[topic] = { accepted, landed: t.keys.size, records: t.records, duplicatesByKey: t.records - t.missingKey - t.keys.size, missingKey: t.missingKey };
    if (t.keys.size < accepted) violations.push(`${topic}: ${accepted} commands accepted (flux_commands_produced_total) but ${t.keys.size} distinct idempotency keys in the topic`);
    if (t.missingKey > 0) violations.push(`${topic}: ${t.missingKey} records without an idempotency-key header`);
  }
  let landed = 0;
  let landedDuringFaults = 0;
  let duringFaults = 0;
  for (const u of updates) {
    const keys = weather.get(`${u.userId}|${u.city}`);
    if (u.duringFault) duringFaults++;
    if (!keys) continue;
    landed++;
    if (u.duringFault) landedDuringFaults++;
    if (keys.size > 1) violations.push(`weather command for ${u.userId} ${u.city} landed under ${keys.size} idempotency keys (sent twice)`);
  }
  const known = new Set(updates.map((u) => `${u.userId}|${u.city}`));
  for (const id of weather.keys()) if (!known.has(id)) violations.push(`weather command ${id} matches no update a client sent`);
  return { topics, updates: updates.length, landed, duringFaults, landedDuringFaults, violations };
}

/**
 * Error lines the gateway is known to log for conditions it handles (gateway bugs reported
 * with the soak, issue 19): each is counted and shown apart; any other error line, and every
 * panic, is a violation. `window: "broker"`: accepted only while a broker fault lasts (from
 * its injection to 15 s after the broker is back: a command send times out after
 * kafka.send_timeout, 10 s). FLUX_CHAOS_STRICT_LOGS=1 makes them violations too, for the
 * run that checks a fix. Remove an entry once its bug is fixed.
 */
export const KNOWN_ERRORS = [
  {
    id: "topic_exists_race",
    test: (j) => j.target === "rskafka::client::controller" && /TopicAlreadyExists/.test(j.e ?? ""),
    window: "any",
    why: "two sends create the same missing command topic at once; rskafka logs the loser's TopicAlreadyExists at error level (the create succeeded)",
  },
  {
    id: "rskafka_connection_at_error",
    test: (j) => /^rskafka::/.test(j.target ?? "") && /Connection is poisoned|Connection reset|early eof|Broken pipe|Connection refused/i.test(j.e ?? j.error ?? ""),
    window: "broker",
    why: "rskafka logs a broker connection lost mid-request at error level, and the gateway's rskafka=warn filter lets it through",
  },
  {
    id: "kafka_unavailable_at_error",
    test: (j) => /^flux_bff::adapters::kafka::(event_source|command_sink)$/.test(j.target ?? "") && /unavailable/.test(j.error ?? j.message ?? ""),
    window: "broker",
    why: "#[instrument(err)] on the Kafka adapters logs each failed subscribe and command send of a broker outage at error level, unthrottled, beside the throttled warning of D18's degraded mode",
  },
];

/**
 * Scans a gateway log (JSON lines): error-level lines (known ones apart, see KNOWN_ERRORS),
 * panics, warnings by target and message. `brokerDown(ms)` says whether a broker fault was
 * under way at a time.
 */
export function scanLog(text, { brokerDown = () => false, strict = false } = {}) {
  const errors = [];
  const known = {};
  const panics = [];
  const warnings = {};
  const other = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    if (/panicked at/.test(line)) panics.push(line);
    let j;
    try {
      j = JSON.parse(line);
    } catch {
      if (!/panicked at|^note: run with `RUST_BACKTRACE/.test(line)) other.push(line);
      continue;
    }
    const level = String(j.level ?? "").toUpperCase();
    if (level === "ERROR") {
      const at = Date.parse(j.timestamp ?? "");
      const k = strict ? null : KNOWN_ERRORS.find((e) => e.test(j) && (e.window === "any" || brokerDown(at)));
      if (k) known[k.id] = (known[k.id] ?? 0) + 1;
      else errors.push(line);
    } else if (level === "WARN") {
      const m = `${j.target ?? "?"}: ${j.message ?? "?"}`;
      warnings[m] = (warnings[m] ?? 0) + 1;
    }
  }
  return { errors, known, panics, warnings, other };
}

/**
 * Findings as ranges: consecutive numbers of one client, stream and cause in one line,
 * `c7 stocks#27-49 (23): why`.
 */
export function asRanges(findings) {
  const out = [];
  let cur = null;
  for (const f of [...findings].sort((a, b) => (a.client ?? "").localeCompare(b.client ?? "") || a.stream.localeCompare(b.stream) || a.seq - b.seq)) {
    if (cur && cur.client === f.client && cur.stream === f.stream && cur.why === f.why && f.seq === cur.to + 1) {
      cur.to = f.seq;
      cur.n++;
    } else {
      if (cur) out.push(cur);
      cur = { client: f.client, stream: f.stream, why: f.why, from: f.seq, to: f.seq, n: 1 };
    }
  }
  if (cur) out.push(cur);
  return out.map((r) => `${r.client} ${r.stream}#${r.from}${r.to > r.from ? `-${r.to}` : ""} (${r.n}): ${r.why}`);
}
