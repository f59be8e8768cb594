// Reproduces a gateway bug the chaos soak found (seed 1, fault #12: replica_term on a replica
// restarted while the broker was down): SIGTERM before the event consumers first subscribe
// panics with "`async fn` resumed after completion" at src/app/lifecycle.rs (the shutdown
// signal future is polled to completion in the start-up select!, then awaited again after
// it) and the process exits 101 instead of 0. Not the known "default namespace not found"
// panic of issue 19. Kafka mode with an address nothing listens on; SIGTERM after 1 s.
// Exit 1 when it panicked (or did not exit 0).
//   FLUX_BFF_BIN=target/debug/flux-bff node tests/node/chaos/repro/sigterm-during-startup.mjs
import { sleep, startServer } from "../../support/server.mjs";

const g = await startServer({ FLUX_KAFKA__BROKERS: '["127.0.0.1:1"]', FLUX_LOG__LEVEL: "info" });
await sleep(1000);
const exit = await g.kill("SIGTERM", 15_000);
const panic = g.logs().split("\n").filter((l) => /panicked at|resumed after completion/.test(l));
console.log(`exit ${JSON.stringify({ code: exit.code, signal: exit.signal })}${panic.length ? `; ${panic.join(" ")}` : ""}`);
process.exit(exit.code === 0 && panic.length === 0 ? 0 : 1);
