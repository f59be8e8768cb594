// Invariants of the rendered Helm chart (deploy/helm/flux-bff), on `helm template` output:
// - the probe paths answer 200 on the real binary, started with the rendered container
//   environment (secrets resolved from the rendered Secret), so the chart's FLUX_* settings
//   also parse in the gateway's configuration;
// - terminationGracePeriodSeconds is above the preStop sleep plus the shutdown deadline the
//   gateway is given, and the gateway really exits within it on SIGTERM;
// - exactly one Secret carries the recovery secret, referenced by the one pod template every
//   replica is made from (env or mounted file, never a literal value);
// - the Service, PodDisruptionBudget, topology spread and HPA select or target these pods;
// - numbers from a values file (float64 in Helm) render in plain decimal, which the binary takes;
// - extraVolumes and extraVolumeMounts reach the pod, beside the recovery secret's volume;
// - the PodDisruptionBudget lets an unready pod be evicted (AlwaysAllow, Kubernetes >= 1.27);
// - the ServiceMonitor's job matches FluxBffDown's job selector, even with fullnameOverride;
// - without valkey.url the pods use the in-process cache, never the gateway's default Valkey
//   on 127.0.0.1 (a cache down forever), and NOTES say each replica has its own;
// - a new value of the chart's recovery Secret changes the pod template (a rollout).
// Each holds for the defaults and for the other shapes of the values (secret as a file, an
// existing Secret, another deadline, Kafka brokers). Needs Helm (FLUX_HELM, or the copy
// scripts/ops-check.sh installs) and the binary (FLUX_BFF_BIN or target/debug/flux-bff).

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";

import { freePort, sleep, startServer } from "../support/server.mjs";
import yaml from "yaml";

import { durationSeconds, renderChart, renderNotes, rulesFile } from "./support.mjs";

const RECOVERY_ENV = "FLUX_SOCKETIO__RECOVERY_SECRET";
const RECOVERY_FILE_ENV = "FLUX_SOCKETIO__RECOVERY_SECRET_FILE";

const byKind = (objects, kind) => objects.filter((o) => o.kind === kind);
function one(objects, kind) {
  const found = byKind(objects, kind);
  assert.equal(found.length, 1, `expected exactly one ${kind}, rendered ${found.length}`);
  return found[0];
}
const envOf = (container) => Object.fromEntries((container.env ?? []).map((e) => [e.name, e]));
const subsetOf = (selector, labels) => Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The Secret names the pod spec reads the recovery secret from, and how. */
function recoverySecretRefs(pod, container) {
  const env = envOf(container);
  const refs = [];
  if (env[RECOVERY_ENV]) {
    assert.equal(env[RECOVERY_ENV].value, undefined, `${RECOVERY_ENV} must come from a Secret, not a literal value`);
    const ref = env[RECOVERY_ENV].valueFrom?.secretKeyRef;
    assert.ok(ref, `${RECOVERY_ENV} has no secretKeyRef: ${JSON.stringify(env[RECOVERY_ENV])}`);
    refs.push({ via: "env", name: ref.name, key: ref.key });
  }
  if (env[RECOVERY_FILE_ENV]) {
    const file = env[RECOVERY_FILE_ENV].value;
    const mount = (container.volumeMounts ?? []).find((m) => file.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
    assert.ok(mount, `${RECOVERY_FILE_ENV}=${file} is under no volume mount`);
    const volume = (pod.volumes ?? []).find((v) => v.name === mount.name);
    assert.ok(volume?.secret, `the volume mounted at ${mount.mountPath} is not a Secret: ${JSON.stringify(volume)}`);
    const rel = file.slice(mount.mountPath.replace(/\/$/, "").length + 1);
    const item = (volume.secret.items ?? []).find((i) => i.path === rel);
    refs.push({ via: "file", name: volume.secret.secretName, key: item ? item.key : rel, file, mountPath: mount.mountPath, rel });
  }
  return refs;
}

function secretValue(secret, key) {
  if (secret.stringData?.[key] != null) return secret.stringData[key];
  assert.ok(secret.data?.[key] != null, `Secret ${secret.metadata.name} has no key ${key}`);
  return Buffer.from(secret.data[key], "base64").toString("utf8");
}

/**
 * Every invariant of one render; `existing` is the value of a Secret the chart does not
 * render (existingSecret). Resolves what the binary needs: {deployment, container, env, secret}.
 */
function checkRender(objects, { existing } = {}) {
  const deployment = one(objects, "Deployment");
  const pod = deployment.spec.template.spec;
  const podLabels = deployment.spec.template.metadata.labels;
  const container = pod.containers.find((c) => c.name === "flux-bff");
  assert.ok(container, "no flux-bff container");
  const env = envOf(container);

  // Probes: the documented paths, on the port the gateway listens on.
  const http = (container.ports ?? []).find((p) => p.name === "http");
  assert.ok(http, "no container port named http");
  assert.equal(env.FLUX_HTTP__PORT?.value, String(http.containerPort), "FLUX_HTTP__PORT differs from the container port");
  assert.equal(container.readinessProbe?.httpGet?.path, "/readyz");
  assert.equal(container.livenessProbe?.httpGet?.path, "/healthz");
  for (const probe of [container.readinessProbe, container.livenessProbe]) {
    assert.ok(probe.httpGet.port === "http" || probe.httpGet.port === http.containerPort, `probe port ${probe.httpGet.port} is not the gateway's`);
  }

  // Grace: above the preStop sleep plus the deadline the gateway is given.
  const deadline = durationSeconds(env.FLUX_LIFECYCLE__SHUTDOWN_DEADLINE?.value ?? "10s");
  const preStop = container.lifecycle?.preStop?.exec?.command;
  const sleepSeconds = preStop ? Number(preStop[preStop.length - 1]) : 0;
  assert.ok(Number.isFinite(sleepSeconds), `preStop ${JSON.stringify(preStop)}`);
  const grace = pod.terminationGracePeriodSeconds;
  assert.ok(Number.isInteger(grace), `terminationGracePeriodSeconds is ${grace}`);
  assert.ok(grace > sleepSeconds + deadline, `terminationGracePeriodSeconds ${grace} is not above preStop ${sleepSeconds} s + shutdown deadline ${deadline} s`);

  // One Secret, referenced by the single pod template of every replica.
  assert.equal(byKind(objects, "StatefulSet").length + byKind(objects, "DaemonSet").length, 0, "replicas must come from one Deployment");
  const refs = recoverySecretRefs(pod, container);
  assert.equal(refs.length, 1, `the recovery secret must reach the gateway one way, got ${JSON.stringify(refs)}`);
  const [ref] = refs;
  const rendered = byKind(objects, "Secret");
  const carrying = rendered.filter((s) => s.data?.[ref.key] != null || s.stringData?.[ref.key] != null);
  let secret;
  if (existing === undefined) {
    assert.equal(carrying.length, 1, `exactly one rendered Secret must carry ${ref.key}: ${carrying.map((s) => s.metadata.name)}`);
    assert.equal(carrying[0].metadata.name, ref.name, "the pods read another Secret than the one rendered");
    secret = secretValue(carrying[0], ref.key);
    assert.ok(secret.length >= 32, `the recovery secret has ${secret.length} characters; the gateway wants at least 32`);
  } else {
    assert.equal(carrying.length, 0, "with existingSecret the chart must not render a second recovery Secret");
    secret = existing;
  }
  const hpa = byKind(objects, "HorizontalPodAutoscaler");
  const replicas = hpa.length ? hpa[0].spec.minReplicas : deployment.spec.replicas;
  assert.ok(replicas >= 2, `at least 2 replicas expected, got ${replicas}`);

  // Everything that selects the pods selects these pods.
  const service = one(objects, "Service");
  assert.ok(subsetOf(service.spec.selector, podLabels), "the Service does not select the pods");
  assert.ok(service.spec.ports.some((p) => p.targetPort === "http" || p.targetPort === http.containerPort), "the Service does not target the http port");
  assert.ok(subsetOf(deployment.spec.selector.matchLabels, podLabels));
  for (const pdb of byKind(objects, "PodDisruptionBudget")) assert.ok(subsetOf(pdb.spec.selector.matchLabels, podLabels), "the PDB does not select the pods");
  for (const h of hpa) assert.equal(h.spec.scaleTargetRef.name, deployment.metadata.name, "the HPA targets another Deployment");
  for (const t of pod.topologySpreadConstraints ?? []) assert.ok(subsetOf(t.labelSelector.matchLabels, podLabels), "a spread constraint does not select the pods");
  assert.equal(pod.securityContext?.runAsUser, 10001, "uid 10001, the image's user");
  assert.equal(pod.securityContext?.runAsNonRoot, true);

  return { deployment, pod, container, env, ref, secret, deadline, grace };
}

/**
 * Starts the binary with the rendered container's environment: literal values as they are,
 * the recovery secret from the rendered Secret (or its file written to a temp dir), the pod
 * name for a fieldRef. Only the listen address changes: loopback and a free port.
 */
async function startRendered(r) {
  const env = {};
  let dir = null;
  for (const [name, e] of Object.entries(r.env)) {
    if (name === "FLUX_HTTP__HOST" || name === "FLUX_HTTP__PORT") continue;
    if (e.value !== undefined) env[name] = e.value;
    else if (e.valueFrom?.secretKeyRef?.name === r.ref.name) env[name] = r.secret;
    else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[name] = "flux-bff-test-0";
    else throw new Error(`cannot resolve ${name}: ${JSON.stringify(e.valueFrom)}`);
  }
  if (r.ref.via === "file") {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "flux-ops-secret-"));
    fs.writeFileSync(path.join(dir, r.ref.rel), r.secret, { mode: 0o440 });
    env[RECOVERY_FILE_ENV] = path.join(dir, r.ref.rel);
  }
  const server = await startServer(env);
  return {
    server,
    async stop() {
      const t = Date.now();
      const exit = await server.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
      return { exit, seconds: (Date.now() - t) / 1000 };
    },
  };
}

/** Renders, checks, starts the binary, GETs the probe paths and /metrics, stops it within the grace. */
async function probeOnBinary(r) {
  const { server, stop } = await startRendered(r);
  try {
    for (const probe of [r.container.readinessProbe, r.container.livenessProbe]) {
      const res = await fetch(`${server.url}${probe.httpGet.path}`);
      assert.equal(res.status, 200, `GET ${probe.httpGet.path} answered ${res.status}: ${await res.text()}`);
    }
    const metrics = await fetch(`${server.url}/metrics`);
    assert.equal(metrics.status, 200, "/metrics");
  } finally {
    const { exit, seconds } = await stop();
    console.log(`  binary stopped in ${seconds.toFixed(2)} s on SIGTERM (${JSON.stringify(exit)}); deadline ${r.deadline} s, grace ${r.grace} s`);
    assert.equal(exit.code, 0, `the gateway did not exit cleanly on SIGTERM: ${JSON.stringify(exit)}\n${server.logs()}`);
    assert.ok(seconds < r.grace, `the gateway took ${seconds} s to stop, grace is ${r.grace} s`);
  }
}

/** A values file holding `text`, in a temp dir removed at exit; its path (for `-f`). */
function valuesFile(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flux-ops-values-"));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "values.yaml");
  fs.writeFileSync(file, `${text}\n`);
  return file;
}

describe("Helm chart invariants (helm template)", () => {
  it("defaults: probes answer on the binary, grace above the deadline, one Secret", async () => {
    const r = checkRender(renderChart());
    assert.equal(r.ref.via, "env");
    assert.equal(r.deadline, 10, "the default shutdown deadline is the gateway's (10 s)");
    await probeOnBinary(r);
  });

  it("recovery secret as a mounted file, a 30 s deadline: the same invariants", async () => {
    const r = checkRender(renderChart(["--set", "recovery.secret.asFile=true", "--set", "lifecycle.shutdownDeadlineSeconds=30"]));
    assert.equal(r.ref.via, "file");
    assert.equal(r.deadline, 30);
    assert.ok(r.grace > 30);
    await probeOnBinary(r);
  });

  it("an existing Secret: referenced by name, none rendered", async () => {
    const existing = "an-existing-recovery-secret-0123456789abcdef";
    const r = checkRender(renderChart(["--set", "recovery.secret.existingSecret=my-recovery"]), { existing });
    assert.equal(r.ref.name, "my-recovery");
    await probeOnBinary(r);
  });

  it("numbers from a values file (float64 in Helm) reach the binary as plain integers", async () => {
    // Helm reads a values file's numbers as float64; quoted as they are, those of 1e6 and
    // more render as "4.194304e+06", which the gateway refuses (exit 2: a crash loop).
    const values = [
      "http:",
      "  maxConnections: 2000000",
      "kafka:",
      "  topicPartitions: 1000000",
      "config:",
      "  FLUX_KAFKA__FETCH_MAX_BYTES: 4194304",
      "  FLUX_SOCKETIO__MAX_PAYLOAD: 1048576",
    ].join("\n");
    const r = checkRender(renderChart(["-f", valuesFile(values)]));
    assert.equal(r.env.FLUX_HTTP__MAX_CONNECTIONS.value, "2000000");
    assert.equal(r.env.FLUX_KAFKA__TOPIC_PARTITIONS.value, "1000000");
    assert.equal(r.env.FLUX_KAFKA__FETCH_MAX_BYTES.value, "4194304");
    await probeOnBinary(r);
    // A fractional number stays as written; --set gives int64, rendered as is.
    const env = envOf(checkRender(renderChart(["-f", valuesFile("config:\n  FLUX_X__RATIO: 1.5\n  FLUX_X__BIG: 1e7"), "--set", "config.FLUX_X__SET=5000000"])).container);
    assert.deepEqual([env.FLUX_X__RATIO.value, env.FLUX_X__BIG.value, env.FLUX_X__SET.value], ["1.5", "10000000", "5000000"]);
  });

  it("extra volumes and mounts: the files settings name (JWT key, Kafka TLS) beside the recovery secret's", () => {
    const values = {
      extraVolumes: [
        { name: "jwt", secret: { secretName: "flux-bff-jwt", defaultMode: 0o440 } },
        { name: "kafka-tls", secret: { secretName: "kafka-client-tls" } },
      ],
      extraVolumeMounts: [
        { name: "jwt", mountPath: "/etc/flux-bff/jwt", readOnly: true },
        { name: "kafka-tls", mountPath: "/etc/flux-bff/kafka-tls", readOnly: true },
      ],
      config: { FLUX_AUTH__JWT_KEY_FILE: "/etc/flux-bff/jwt/jwt.pem", FLUX_KAFKA__TLS__CA_FILE: "/etc/flux-bff/kafka-tls/ca.crt" },
    };
    for (const asFile of [false, true]) {
      const r = checkRender(renderChart(["-f", valuesFile(JSON.stringify(values)), "--set", `recovery.secret.asFile=${asFile}`]));
      const mounts = r.container.volumeMounts ?? [];
      const volumes = r.pod.volumes ?? [];
      assert.deepEqual(mounts.filter((m) => m.name !== "recovery-secret"), values.extraVolumeMounts);
      assert.deepEqual(volumes.filter((v) => v.name !== "recovery-secret"), values.extraVolumes);
      assert.equal(mounts.some((m) => m.name === "recovery-secret"), asFile);
      for (const m of mounts) assert.ok(volumes.some((v) => v.name === m.name), `the mount ${m.name} has no volume`);
      for (const [name, file] of [["FLUX_AUTH__JWT_KEY_FILE", "jwt"], ["FLUX_KAFKA__TLS__CA_FILE", "kafka-tls"]]) {
        const mount = mounts.find((m) => r.env[name].value.startsWith(`${m.mountPath}/`));
        assert.equal(mount?.name, file, `${name}=${r.env[name].value} is under no mount of its volume`);
      }
    }
    assert.equal(renderChart().find((o) => o.kind === "Deployment").spec.template.spec.volumes, undefined, "no volumes by default");
    const err = renderChart(["--set", "extraVolumes[0].name=recovery-secret", "--set", "extraVolumes[0].emptyDir.medium=Memory"], { expectFailure: true });
    assert.match(err, /recovery-secret|extraVolumes/);
  });

  it("Kafka brokers: JSON list, a client id per pod, the same invariants", () => {
    const r = checkRender(renderChart(["--set", "kafka.brokers={kafka-0:9092,kafka-1:9092}", "--set", "autoscaling.enabled=false", "--set", "replicaCount=3"]));
    assert.deepEqual(JSON.parse(r.env.FLUX_KAFKA__BROKERS.value), ["kafka-0:9092", "kafka-1:9092"]);
    assert.equal(r.env.FLUX_KAFKA__CLIENT_ID.valueFrom.fieldRef.fieldPath, "metadata.name");
    assert.equal(r.deployment.spec.replicas, 3);
  });

  it("a new recovery secret value changes the pod template, so helm upgrade restarts every pod", () => {
    // The gateway reads the secret only at start-up. Found by review: rotating it with
    // `helm upgrade --set recovery.secret.value=...` changed the Secret and restarted no pod,
    // and old and new pods refused each other's recoveries (bad_signature) until restarted.
    const template = (args) => one(renderChart(args), "Deployment").spec.template.metadata.annotations ?? {};
    const [a, b] = ["a", "b"].map((c) => `${c}${"0123456789abcdef".repeat(4)}`);
    const first = template(["--set", `recovery.secret.value=${a}`]);
    const rotated = template(["--set", `recovery.secret.value=${b}`]);
    assert.notDeepEqual(rotated, first, "another recovery.secret.value renders the same pod-template annotations");
    assert.deepEqual(template(["--set", `recovery.secret.value=${a}`]), first, "the same value must not roll the pods");

    // The checksum is that of the value the rendered Secret holds, a generated one included
    // (rendered once for the Secret and the pod template).
    const sha256 = (text) => crypto.createHash("sha256").update(text).digest("hex");
    for (const args of [["--set", `recovery.secret.value=${a}`], []]) {
      const r = checkRender(renderChart(args));
      assert.equal(r.deployment.spec.template.metadata.annotations["checksum/recovery-secret"], sha256(r.secret), `checksum of the Secret's value (${args.join(" ") || "generated"})`);
    }
    // A Secret the chart does not render: nothing of it in the template (its owner restarts the pods).
    const existing = renderChart(["--set", "recovery.secret.existingSecret=my-recovery"]);
    assert.equal(one(existing, "Deployment").spec.template.metadata.annotations["checksum/recovery-secret"], undefined);
  });

  it("Kafka mode without valkey.url: each replica's in-process cache, not a Valkey on 127.0.0.1", async () => {
    // Found by review: no FLUX_VALKEY__URL left the gateway's Kafka-mode default,
    // redis://127.0.0.1:6379, which no pod has: the cache was down forever and
    // FluxBffValkeyDown fired on every replica.
    const kafka = ["--set", "kafka.brokers={kafka-0:9092}"];
    const r = checkRender(renderChart(kafka));
    assert.equal(r.env.FLUX_VALKEY__URL, undefined);
    assert.equal(r.env.FLUX_VALKEY__ENABLED?.value, "false", "without valkey.url, Valkey must be turned off");
    assert.match(renderNotes(kafka), /valkey\.url is empty, so each replica keeps its own in-process cache/);

    // The binary on that environment (its broker a closed port: not ready) reports its cache up.
    r.env.FLUX_KAFKA__BROKERS = { name: "FLUX_KAFKA__BROKERS", value: JSON.stringify([`127.0.0.1:${await freePort()}`]) };
    const { server, stop } = await startRendered(r);
    try {
      await sleep(500);
      const res = await fetch(`${server.url}/readyz`);
      const body = await res.json();
      assert.equal(body.cache, true, `/readyz: ${JSON.stringify(body)}\n${server.logs()}`);
    } finally {
      await stop();
    }

    // With valkey.url: that Valkey, nothing turned off, nothing said.
    const withUrl = [...kafka, "--set", "valkey.url=redis://valkey:6379"];
    const v = checkRender(renderChart(withUrl));
    assert.equal(v.env.FLUX_VALKEY__URL?.value, "redis://valkey:6379");
    assert.equal(v.env.FLUX_VALKEY__ENABLED, undefined);
    assert.doesNotMatch(renderNotes(withUrl), /in-process cache/);
  });

  it("the PodDisruptionBudget lets an unready replica be evicted, so drains do not hang on it", () => {
    // Readiness follows Kafka (D17/D18): with the default IfHealthyBudget, one unready replica
    // takes the whole maxUnavailable 1 and every eviction (every node drain) is refused.
    const pdb = one(renderChart(), "PodDisruptionBudget");
    assert.equal(pdb.spec.maxUnavailable, 1);
    assert.equal(pdb.spec.unhealthyPodEvictionPolicy, "AlwaysAllow");
    // The field is Kubernetes 1.27's (beta, on by default): left out before, and on request.
    assert.equal(one(renderChart(["--kube-version", "1.26.0"]), "PodDisruptionBudget").spec.unhealthyPodEvictionPolicy, undefined);
    assert.equal(one(renderChart(["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy="]), "PodDisruptionBudget").spec.unhealthyPodEvictionPolicy, undefined);
  });

  it("the ServiceMonitor is off by default and scrapes /metrics on the http port when on", () => {
    assert.equal(byKind(renderChart(), "ServiceMonitor").length, 0);
    const sm = one(renderChart(["--set", "serviceMonitor.enabled=true"]), "ServiceMonitor");
    assert.deepEqual(sm.spec.endpoints.map((e) => [e.port, e.path]), [["http", "/metrics"]]);
  });

  it("the ServiceMonitor's job matches FluxBffDown's job selector, whatever the Service is called", () => {
    // The Prometheus Operator names the job after the Service unless jobLabel names a label
    // of the Service; with fullnameOverride (or a release called e.g. "gateway") the Service's
    // name need not contain flux-bff, and FluxBffDown would never fire.
    const expr = yaml.parse(fs.readFileSync(rulesFile, "utf8")).groups.flatMap((g) => g.rules).find((r) => r.alert === "FluxBffDown").expr;
    const jobRegex = new RegExp(`^(?:${/job=~"([^"]+)"/.exec(expr)[1]})$`);
    for (const args of [[], ["--set", "fullnameOverride=gateway"], ["--set", "fullnameOverride=realtime-gw"]]) {
      const objects = renderChart(["--set", "serviceMonitor.enabled=true", ...args]);
      const sm = one(objects, "ServiceMonitor");
      const service = one(objects, "Service");
      assert.ok(sm.spec.jobLabel, `no jobLabel: the job is the Service's name, ${service.metadata.name}`);
      const job = service.metadata.labels[sm.spec.jobLabel];
      assert.ok(jobRegex.test(job), `job ${job} (Service label ${sm.spec.jobLabel}, ${args.join(" ") || "defaults"}) does not match FluxBffDown's ${jobRegex}`);
    }
  });

  it("refuses in config every variable the chart sets itself", () => {
    // Found by review: only some were refused; the others rendered a second env entry, and
    // the later one (config's) silently won over the chart value that names it.
    const kafka = ["--set", "kafka.brokers={kafka-0:9092}", "--set", "kafka.topicPartitions=3"];
    const valkey = ["--set", "valkey.url=redis://valkey:6379", "--set", "valkey.existingSecret=valkey"];
    // With a Valkey and without (FLUX_VALKEY__ENABLED), the secret as a variable and as a file.
    for (const everything of [[...kafka, ...valkey], kafka]) {
      for (const asFile of ["false", "true"]) {
        const objects = renderChart([...everything, "--set", `recovery.secret.asFile=${asFile}`]);
        const container = one(objects, "Deployment").spec.template.spec.containers.find((c) => c.name === "flux-bff");
        const names = container.env.map((e) => e.name);
        assert.equal(new Set(names).size, names.length, `an env entry twice: ${names}`);
        for (const name of names) {
          const err = renderChart([...everything, "--set", `config.${name}=1`], { expectFailure: true });
          assert.match(err, /set by the chart/, `config.${name}: ${err}`);
        }
      }
    }
  });

  it("refuses values that would break an invariant", () => {
    const cases = [
      [["--set", "config.FLUX_LIFECYCLE__SHUTDOWN_DEADLINE=99s"], /set by the chart/],
      [["--set", `config.${RECOVERY_ENV}=plain-text-secret-in-values-0123456789`], /set by the chart/],
      [["--set", "recovery.secret.value=too-short"], /at least 32 characters/],
      [["--set", "lifecycle.terminationMarginSeconds=0"], /terminationMarginSeconds/],
      [["--set", "config.NOT_FLUX=1"], /FLUX_|propertyNames|pattern/],
      // The gateway itself refuses it (exit 2): the chart says so before any pod crash-loops.
      [["--set", "valkey.url=redis://valkey:6379"], /kafka.brokers is empty.*simulator/],
      // A password for no Valkey: the pods would silently not use it.
      [["--set", "kafka.brokers={kafka-0:9092}", "--set", "valkey.existingSecret=valkey"], /valkey.existingSecret is set but valkey.url is empty/],
    ];
    for (const [args, message] of cases) {
      const err = renderChart(args, { expectFailure: true });
      assert.match(err, message, `helm template ${args.join(" ")}: ${err}`);
    }
    // Each way out of it renders.
    for (const way of [["--set", "kafka.brokers={kafka-0:9092}"], ["--set", "config.FLUX_SIM__ENABLED=false"]]) {
      renderChart(["--set", "valkey.url=redis://valkey:6379", ...way]);
    }
  });
});
