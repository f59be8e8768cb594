// compose.yaml's Prometheus and Grafana, checked on paper (no container engine here; test.sh
// runs `docker compose config` on the file): every mounted file exists, Prometheus loads the
// rule file where it is mounted and scrapes every flux-bff replica of the file on its port,
// Grafana's provisioning loads the dashboard from where it is mounted, from the Prometheus
// service, and the dashboard picks that data source through its variable.
// The gateways stop within their stop_grace_period; nginx restarts with the gateways it
// proxies to. .dockerignore: the build context leaves out build output (every target/) and keeps every
// tracked file the image is built from.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { parse } from "yaml";

import { repo } from "../support/server.mjs";
import { dashboardFile, durationSeconds } from "./support.mjs";

const read = (rel) => fs.readFileSync(path.join(repo, rel), "utf8");
const compose = parse(read("compose.yaml"), { merge: true });

/** The volumes of a service as {source (repo-relative), target}. */
function mounts(service) {
  return (compose.services[service].volumes ?? []).map((v) => {
    const [source, target] = v.split(":");
    return { source: path.normalize(source), target };
  });
}
function mountOf(service, source) {
  const m = mounts(service).find((v) => v.source === path.normalize(source));
  assert.ok(m, `${service} does not mount ${source}: ${JSON.stringify(mounts(service))}`);
  return m.target;
}

describe("compose.yaml: Prometheus and Grafana", () => {
  it("mounts only files and directories that exist", () => {
    for (const service of ["prometheus", "grafana"]) {
      for (const { source } of mounts(service)) assert.ok(fs.existsSync(path.join(repo, source)), `${service} mounts ${source}, which does not exist`);
    }
  });

  it("Prometheus loads the rule file and scrapes every flux-bff replica", () => {
    const configTarget = mountOf("prometheus", "deploy/prometheus/prometheus.compose.yml");
    const rulesTarget = mountOf("prometheus", "deploy/prometheus/flux-bff.rules.yml");
    assert.ok(compose.services.prometheus.command.includes(`--config.file=${configTarget}`), "Prometheus is not started with the mounted config");
    const config = parse(read("deploy/prometheus/prometheus.compose.yml"));
    assert.ok(config.rule_files.includes(rulesTarget), `rule_files ${config.rule_files} miss ${rulesTarget}`);
    const job = config.scrape_configs.find((j) => j.job_name === "flux-bff");
    assert.ok(job, "no scrape job flux-bff (FluxBffDown matches jobs named like it)");
    const targets = job.static_configs.flatMap((s) => s.targets).sort();
    const replicas = Object.entries(compose.services)
      .filter(([, s]) => s.image === "flux-bff:local" && !s.entrypoint)
      .map(([name, s]) => `${name}:${s.environment.FLUX_HTTP__PORT ?? 3000}`)
      .sort();
    assert.ok(replicas.length >= 2, `flux-bff replicas in compose.yaml: ${replicas}`);
    assert.deepEqual(targets, replicas, "scrape targets and compose's flux-bff replicas differ");
  });

  it("Grafana provisions the dashboard from the Prometheus service", () => {
    const provisioning = mountOf("grafana", "deploy/grafana/provisioning");
    assert.equal(provisioning, "/etc/grafana/provisioning");
    const dashboardTarget = mountOf("grafana", path.relative(repo, dashboardFile));
    const providers = parse(read("deploy/grafana/provisioning/dashboards/flux-bff.yaml")).providers;
    assert.ok(providers.some((p) => p.type === "file" && path.dirname(dashboardTarget) === path.normalize(p.options.path)), `no provider loads ${dashboardTarget}`);
    const sources = parse(read("deploy/grafana/provisioning/datasources/prometheus.yaml")).datasources;
    const prom = sources.find((d) => d.type === "prometheus");
    assert.ok(prom?.isDefault, "the Prometheus data source must be the default: the dashboard's variable picks the default");
    const url = new URL(prom.url);
    assert.ok(compose.services[url.hostname], `the data source points at ${url.hostname}, not a compose service`);
    assert.equal(url.port, "9090");
    const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8"));
    const ds = dashboard.templating.list.find((v) => v.type === "datasource");
    assert.equal(ds?.query, "prometheus", "the dashboard needs a datasource variable of type prometheus");
    assert.equal(compose.services.grafana.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH, dashboardTarget);
  });
});

describe("compose.yaml: the gateways and nginx", () => {
  const gateways = Object.entries(compose.services).filter(([, s]) => s.image === "flux-bff:local" && s.environment?.FLUX_KAFKA__BROKERS && !s.entrypoint);

  it("gives each gateway more than its shutdown deadline to stop", () => {
    assert.deepEqual(gateways.map(([name]) => name).sort(), ["bff-1", "bff-2"]);
    for (const [name, s] of gateways) {
      const deadline = durationSeconds(s.environment.FLUX_LIFECYCLE__SHUTDOWN_DEADLINE ?? "10s");
      // Docker's default is 10 s, the gateway's default deadline: a slow producer flush is
      // SIGKILLed.
      assert.ok(s.stop_grace_period, `${name} has no stop_grace_period: Docker's 10 s is not above the ${deadline} s deadline`);
      const grace = durationSeconds(s.stop_grace_period);
      assert.ok(grace > deadline, `${name}: stop_grace_period ${grace} s is not above the shutdown deadline ${deadline} s`);
    }
  });

  it("restarts nginx when a gateway it proxies to is recreated", () => {
    // nginx resolves its upstream servers' names once, at start.
    const upstreams = [...read("deploy/nginx.conf").matchAll(/server\s+([a-z0-9-]+):\d+/g)].map((m) => m[1]);
    assert.ok(upstreams.length > 0, "no upstream server in deploy/nginx.conf");
    for (const name of new Set(upstreams)) {
      const dep = compose.services.nginx.depends_on?.[name];
      assert.ok(dep, `nginx does not depend on ${name}`);
      assert.equal(dep.restart, true, `nginx's depends_on ${name} has no restart: true`);
      assert.equal(dep.condition, "service_healthy");
    }
  });
});

/**
 * .dockerignore as Docker reads it (moby/patternmatcher): `#` comments, `!` exceptions, paths
 * cleaned and relative to the context; `**` any number of directories, `*` and `?` within one;
 * the last pattern that matches a path or one of its parent directories decides.
 */
function dockerignore(text) {
  const rules = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => {
      const negate = l.startsWith("!");
      const pattern = path.posix.normalize((negate ? l.slice(1) : l).trim()).replace(/^\/+/, "").replace(/\/+$/, "");
      let re = "";
      for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i];
        if (c === "*" && pattern[i + 1] === "*") {
          i++;
          if (pattern[i + 1] === "/") {
            i++;
            re += "(?:.*/)?";
          } else re += ".*";
        } else if (c === "*") re += "[^/]*";
        else if (c === "?") re += "[^/]";
        else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
      }
      return { negate, re: new RegExp(`^${re}$`) };
    });
  return (file) => {
    const parts = file.split("/");
    const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
    let excluded = false;
    for (const { negate, re } of rules) if (prefixes.some((p) => re.test(p))) excluded = !negate;
    return excluded;
  };
}

describe(".dockerignore: the Docker build context", () => {
  const excluded = dockerignore(read(".dockerignore"));

  it("leaves out build output of every crate and cargo-fuzz's files", () => {
    for (const file of [
      "target/release/flux-bff",
      "fuzz/target/x86_64-unknown-linux-gnu/release/client_event",
      "tools/flux-loadgen/target/debug/flux-loadgen",
      "fuzz/corpus/client_event/05f4a5584dbeedd6",
      "fuzz/artifacts/client_event/crash-0",
      "tests/node/node_modules/yaml/package.json",
      ".git/HEAD",
    ]) {
      assert.ok(excluded(file), `${file} is sent as build context`);
    }
  });

  it("keeps every tracked file the image's build reads", () => {
    const ls = spawnSync("git", ["ls-files"], { cwd: repo, encoding: "utf8" });
    assert.equal(ls.status, 0, ls.stderr);
    const tracked = ls.stdout.split("\n").filter(Boolean);
    // Only cargo-fuzz's corpus (fuzz/ is outside the workspace) may be left out.
    const left = tracked.filter(excluded).filter((f) => !f.startsWith("fuzz/corpus/"));
    assert.deepEqual(left, [], "tracked files left out of the build context");
    for (const file of ["Dockerfile", "Cargo.toml", "Cargo.lock", "src/main.rs", "tools/flux-loadgen/Cargo.toml", "vendor/engineioxide/Cargo.toml", "assets/dashboard.html"]) {
      assert.ok(tracked.includes(file) && !excluded(file), `${file} must be in the build context`);
    }
  });
});
