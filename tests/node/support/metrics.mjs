// The gateway's /metrics (Prometheus text), read the same way by every suite and the chaos
// driver: parsed once into series, summed by name and, when asked, grouped by one label.

/** Prometheus text into {"name{labels}": value} (labels as printed; comments skipped). */
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (m) out[`${m[1]}${m[2] ?? ""}`] = Number(m[3]);
  }
  return out;
}

/**
 * Sums the series of exactly `name` (not `name_bucket` and the like) whose labels include
 * every pair of `where`, by the value of `label` ({"": total} when label is null; {} when
 * none matched).
 */
export function sumBy(metrics, name, label = null, where = {}) {
  const out = {};
  for (const [k, v] of Object.entries(metrics)) {
    const m = k.match(/^([^{]+)(\{.*\})?$/);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (!Object.entries(where).every(([wk, wv]) => labels[wk] === wv)) continue;
    if (label && labels[label] === undefined) continue;
    const key = label ? labels[label] : "";
    out[key] = (out[key] ?? 0) + v;
  }
  return out;
}

/** A scrape of `server` (from support/server.mjs); rejects after `timeout` ms. */
export async function scrape(server, { timeout = 5_000 } = {}) {
  const res = await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(timeout) });
  return parseMetrics(await res.text());
}

/** One counter or gauge of `server`: the sum of its series matching `where` (0 when none). */
export async function metric(server, name, where = {}) {
  return sumBy(await scrape(server), name, null, where)[""] ?? 0;
}
