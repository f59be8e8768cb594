// compose.yaml's Prometheus and Grafana, checked on paper (no container engine here; test.sh
// runs `docker compose config` on the file): every mounted file exists, Prometheus loads the
// rule file where it is mounted and scrapes every flux-bff replica of the file on its port,
// Grafana's provisioning loads the dashboard from where it is mounted, from the Prometheus
// service, and the dashboard picks that data source through its variable.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { parse } from "yaml";

import { repo } from "../support/server.mjs";
import { dashboardFile } from "./support.mjs";

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
