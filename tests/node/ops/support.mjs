// Helpers of the operator-artefact tests (tests/node/ops, run by scripts/ops-check.sh): Helm
// renders of deploy/helm/flux-bff, a redis-server and a Prometheus on free loopback ports, and
// Prometheus HTTP API queries.

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseAllDocuments } from "yaml";

import { freePort, repo, sleep } from "../support/server.mjs";

export const chartDir = path.join(repo, "deploy/helm/flux-bff");
export const dashboardFile = path.join(repo, "deploy/grafana/flux-bff.json");
export const rulesFile = path.join(repo, "deploy/prometheus/flux-bff.rules.yml");

const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");

/** A tool from the environment variable `envName`, else `fallback` (a path or a name on PATH); fails with the fix. */
function tool(envName, fallback, fix, versionArgs = ["--version"]) {
  const candidate = process.env[envName] || fallback;
  const probe = spawnSync(candidate, versionArgs, { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    throw new Error(`${candidate} is not runnable (${probe.error?.message ?? `exit ${probe.status}: ${probe.stderr}`}): ${fix}, or set ${envName}`);
  }
  return candidate;
}

/** Helm: FLUX_HELM, else the copy scripts/ops-check.sh installs in ~/.cache/flux-bff/bin. */
export function helmBinary() {
  return tool("FLUX_HELM", path.join(cache, "flux-bff/bin/helm"), "run scripts/ops-check.sh (it installs Helm from the Go module proxy)", ["version"]);
}

/**
 * `helm template` of the chart with `args` (e.g. ["--set", "x=y"]); resolves the rendered
 * objects, or throws with Helm's message. `expectFailure` returns that message instead.
 */
export function renderChart(args = [], { expectFailure = false } = {}) {
  const helm = helmBinary();
  const r = spawnSync(helm, ["template", "flux", chartDir, "--namespace", "flux", ...args], { encoding: "utf8" });
  if (expectFailure) {
    if (r.status === 0) throw new Error(`helm template ${args.join(" ")} rendered, but was expected to fail`);
    return r.stderr;
  }
  if (r.status !== 0) throw new Error(`helm template ${args.join(" ")} failed (exit ${r.status}):\n${r.stderr}`);
  const docs = parseAllDocuments(r.stdout);
  const objects = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`rendered YAML does not parse: ${d.errors.map((e) => e.message).join("; ")}`);
    const o = d.toJS();
    if (o) objects.push(o);
  }
  return objects;
}

/**
 * The chart's NOTES.txt as `helm install --dry-run=client` prints them with `args` (`helm
 * template` does not render NOTES; a client dry run reads no cluster).
 */
export function renderNotes(args = []) {
  const helm = helmBinary();
  const r = spawnSync(helm, ["install", "flux", chartDir, "--namespace", "flux", "--dry-run=client", ...args], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`helm install --dry-run=client ${args.join(" ")} failed (exit ${r.status}):\n${r.stderr}`);
  const at = r.stdout.indexOf("\nNOTES:\n");
  if (at < 0) throw new Error(`no NOTES in the dry run's output:\n${r.stdout}`);
  return r.stdout.slice(at + "\nNOTES:\n".length);
}

/** Parses a Go/humantime duration as the gateway takes it ("10s", "1m30s", "500ms"); seconds. */
export function durationSeconds(text) {
  const units = { ms: 0.001, s: 1, m: 60, h: 3600 };
  let total = 0;
  let rest = String(text).trim();
  if (!/^(\d+(ms|s|m|h))+$/.test(rest)) throw new Error(`not a duration: ${text}`);
  for (const [, n, u] of rest.matchAll(/(\d+)(ms|s|m|h)/g)) total += Number(n) * units[u];
  return total;
}

/** Spawns a long-running process; resolves {child, output(), exited(), stop()}. */
function daemon(cmd, args, { cwd } = {}) {
  const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (d) => {
    output += d;
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exit = null;
  child.on("exit", (code, signal) => (exit = { code, signal }));
  child.on("error", (e) => (exit = { error: e.message }));
  return {
    child,
    output: () => output,
    exited: () => exit,
    async stop() {
      if (exit) return exit;
      const done = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const result = await done;
      clearTimeout(timer);
      return result;
    },
  };
}

/**
 * Prometheus (Debian's package: PROMETHEUS, else `prometheus` on PATH) on a free loopback port
 * with its own config and storage in a temp dir, scraping `targets` (host:port) as job
 * "flux-bff" every `scrapeInterval`, with `ruleFiles` loaded. Resolves {url, query(expr),
 * api(path), output(), stop()} once /-/ready answers. No systemd, no service: a child process.
 */
export async function startPrometheus({ targets, ruleFiles = [], scrapeInterval = "1s" }) {
  const bin = tool("PROMETHEUS", "prometheus", "install Debian's prometheus package (scripts/ops-check.sh does)");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flux-ops-prometheus-"));
  const config = [
    "global:",
    `  scrape_interval: ${scrapeInterval}`,
    `  scrape_timeout: ${scrapeInterval}`,
    `  evaluation_interval: ${scrapeInterval}`,
    "rule_files:",
    ...ruleFiles.map((f) => `  - ${JSON.stringify(f)}`),
    "scrape_configs:",
    "  - job_name: flux-bff",
    "    static_configs:",
    `      - targets: ${JSON.stringify(targets)}`,
    "",
  ].join("\n");
  fs.writeFileSync(path.join(dir, "prometheus.yml"), config);
  const port = await freePort();
  const d = daemon(bin, [
    `--config.file=${path.join(dir, "prometheus.yml")}`,
    `--storage.tsdb.path=${path.join(dir, "data")}`,
    `--web.listen-address=127.0.0.1:${port}`,
    "--log.level=warn",
  ], { cwd: dir });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (d.exited()) throw new Error(`prometheus exited at start (${JSON.stringify(d.exited())}):\n${d.output()}\n--- config:\n${config}`);
    try {
      if ((await fetch(`${url}/-/ready`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await d.stop();
      throw new Error(`prometheus did not become ready on ${url} within 30 s:\n${d.output()}`);
    }
    await sleep(100);
  }
  async function api(pathAndQuery) {
    const r = await fetch(`${url}${pathAndQuery}`);
    const body = await r.json().catch(() => ({ status: "error", error: `HTTP ${r.status}, not JSON` }));
    if (body.status !== "success") throw new Error(`${pathAndQuery}: ${body.errorType ?? ""} ${body.error ?? JSON.stringify(body)}`);
    return body.data;
  }
  return {
    url,
    config,
    output: () => d.output(),
    api,
    /** An instant query; resolves the API's `data` ({resultType, result}). */
    query: (expr) => api(`/api/v1/query?${new URLSearchParams({ query: expr })}`),
    async stop() {
      await d.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The dashboard's panels, rows' nested panels included, without the rows themselves. */
export function dashboardPanels(dashboard) {
  const out = [];
  const walk = (panels) => {
    for (const p of panels ?? []) {
      if (p.type === "row") walk(p.panels);
      else out.push(p);
    }
  };
  walk(dashboard.panels);
  return out;
}

/**
 * Replaces the dashboard's template variables in `expr` as Grafana would: `values` maps a
 * variable name to the regex it stands for (Grafana's "All" of a multi-value variable is the
 * alternation of its values); `$__rate_interval` and the other interval variables become
 * `interval`. Throws on a variable it does not know.
 */
export function substitute(expr, values, interval) {
  const builtins = { __rate_interval: interval, __interval: interval, __range: interval };
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)/g, (m, a, b, c) => {
    const name = a ?? b ?? c;
    if (name in builtins) return builtins[name];
    if (name in values) return values[name];
    throw new Error(`unknown variable ${m} in ${expr}`);
  });
}

/** Metric names of our namespaces (flux_*, process_*) a PromQL text uses. */
export function metricNames(expr) {
  const code = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""'); // label values are not names
  return [...new Set(code.match(/(?<![\w:])(?:flux|process)_[a-z0-9_]+(?![\w:]|\s*\()/g) ?? [])];
}
