#!/usr/bin/env bash
# Apache Kafka 4 for flux-bff's tests and benchmarks: the broker's jars from Maven Central,
# a single-node KRaft broker (broker and controller in one process) on loopback ports.
#
#   scripts/kafka.sh fetch
#       Fetches org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies with
#       `mvn dependency:copy-dependencies` into $FLUX_KAFKA_HOME/libs (cached: a second call
#       does nothing) and prints that directory.
#   scripts/kafka.sh run DIR PORT [ADVERTISED]
#       Writes DIR/server.properties, formats DIR/data on first use (a later run with the same
#       DIR keeps the data: a broker restart), and execs the broker in the foreground on
#       127.0.0.1:PORT (its controller on a free port). ADVERTISED (host:port, default
#       127.0.0.1:PORT) is what it tells clients to connect to, e.g. a proxy in front of it.
#       Used by the gateway's Kafka tests (tests/it/support/kafka_broker.rs) and by
#       `flux-loadgen --spawn-kafka` (tools/flux-loadgen; its own tests use that option),
#       which own the process. A second node joins with KAFKA_NODE_ID=2
#       KAFKA_JOIN=127.0.0.1:<DIR1/controller.port>
#       KAFKA_CLUSTER_ID=<cluster.id of DIR1/data/meta.properties> (a broker-only node).
#   scripts/kafka.sh start DIR PORT
#       `run` in the background (log in DIR/broker.log, pid in DIR/broker.pid); returns once
#       the broker answers on PORT, or fails with the log's tail.
#   scripts/kafka.sh stop DIR
#       Stops the broker started by `start` in DIR (SIGTERM, then SIGKILL after 20 s).
#   scripts/kafka.sh tool CLASS ARGS...
#       Runs one of Kafka's tools by class, e.g. org.apache.kafka.tools.ProducerPerformance.
#   scripts/kafka.sh topics ARGS...
#       Kafka's kafka-topics.sh (TopicCommand), e.g.
#       `scripts/kafka.sh topics --bootstrap-server 127.0.0.1:9092 --alter --topic t --partitions 3`.
#
# Environment: KAFKA_VERSION (default 4.1.0, the version of compose.yaml's apache/kafka
# image), FLUX_KAFKA_HOME (default ~/.cache/flux-bff/kafka-$KAFKA_VERSION), KAFKA_HEAP_OPTS
# (default -Xms256m -Xmx512m), JAVA (default: java on PATH), KAFKA_NUM_PARTITIONS (the
# broker's num.partitions, default 1).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.0}"
FLUX_KAFKA_HOME="${FLUX_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/flux-bff/kafka-$KAFKA_VERSION}"
LIBS="$FLUX_KAFKA_HOME/libs"
JAVA="${JAVA:-java}"
LOG4J_VERSION=2.24.3 # the log4j-core that kafka_2.13 $KAFKA_VERSION depends on

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  if [ -f "$LIBS/.complete" ]; then
    echo "$LIBS"
    return
  fi
  # Tests start brokers in parallel: one fetch at a time, the others wait for it and find the
  # jars there (a second fetch would remove them under the brokers already running). The lock
  # is held by a subshell, so no broker started afterwards inherits it.
  mkdir -p "$FLUX_KAFKA_HOME"
  (
    command -v flock >/dev/null && flock 9
    if [ -f "$LIBS/.complete" ]; then
      echo "$LIBS"
    else
      fetch_now
    fi
  ) 9>"$FLUX_KAFKA_HOME/fetch.lock" || exit $?
}

fetch_now() {
  command -v mvn >/dev/null || die "mvn (Maven) is not on PATH: install it (apt-get install -y maven) to fetch the Kafka broker's jars"
  command -v "$JAVA" >/dev/null || die "java is not on PATH: install a JDK 17+ (apt-get install -y openjdk-17-jre-headless) or set JAVA"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION broker jars from Maven Central into $LIBS" >&2
  local work
  work="$(mktemp -d)"
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flux-bff</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- kafka-topics' TopicCommand: partitions added and topic configs in the tests -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- the broker logs through slf4j 1.7: without a binding it logs nothing -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS"
  mkdir -p "$LIBS"
  if ! mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$work/mvn.log" 2>&1; then
    tail -n 30 "$work/mvn.log" >&2
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log above); is Maven Central reachable?"
  fi
  ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "kafka_2.13-$KAFKA_VERSION.jar missing in $LIBS after mvn"
  touch "$LIBS/.complete"
  rm -rf "$work"
  echo "kafka.sh: $(ls "$LIBS" | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $LIBS" >&2
  echo "$LIBS"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

run() {
  local dir="${1:?usage: kafka.sh run DIR PORT [ADVERTISED]}" port="${2:?usage: kafka.sh run DIR PORT [ADVERTISED]}"
  local advertised="${3:-127.0.0.1:$port}"
  [ -f "$LIBS/.complete" ] || fetch >/dev/null
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local node="${KAFKA_NODE_ID:-1}" roles voters listeners
  if [ -n "${KAFKA_JOIN:-}" ]; then
    # A broker-only node of the cluster whose controller answers at KAFKA_JOIN.
    roles=broker
    voters="1@$KAFKA_JOIN"
    listeners="PLAINTEXT://127.0.0.1:$port"
  else
    # The controller's port is kept across restarts, for nodes that joined this one.
    # Never the broker's own port: that one is free too until the broker binds it.
    if [ ! -s "$dir/controller.port" ]; then
      local c
      c="$(free_port)"
      while [ "$c" = "$port" ]; do c="$(free_port)"; done
      echo "$c" >"$dir/controller.port"
    fi
    local controller
    controller="$(cat "$dir/controller.port")"
    roles=broker,controller
    voters="$node@127.0.0.1:$controller"
    listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller"
  fi
  # A restart keeps node, cluster and data.
  cat >"$dir/server.properties" <<EOF
process.roles=$roles
node.id=$node
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=PLAINTEXT://$advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=${KAFKA_NUM_PARTITIONS:-1}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Quick shutdown in tests, and a stopped follower leaves the ISR within 5 s (Kafka: 30 s);
# the rest is Kafka's defaults.
controlled.shutdown.enable=false
replica.lag.time.max.ms=5000
EOF
  local cp="$LIBS/*"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster="${KAFKA_CLUSTER_ID:-}"
    [ -n "$cluster" ] || cluster="$("$JAVA" -cp "$cp" kafka.tools.StorageTool random-uuid)"
    "$JAVA" -cp "$cp" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting the KRaft storage in $dir/data failed (log above)"; }
  fi
  # Warnings and errors, and the line that says the broker is up.
  cat >"$dir/log4j2.properties" <<'LOG4J'
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.started.name=kafka.server.KafkaRaftServer
logger.started.level=INFO
LOG4J
  # shellcheck disable=SC2086
  exec "$JAVA" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$dir/server.properties"
}

start() {
  local dir="${1:?usage: kafka.sh start DIR PORT}" port="${2:?usage: kafka.sh start DIR PORT}"
  mkdir -p "$dir"
  nohup "$0" run "$dir" "$port" >"$dir/broker.log" 2>&1 &
  echo $! >"$dir/broker.pid"
  local waited=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
      tail -n 30 "$dir/broker.log" >&2
      die "the broker exited at start-up (log above, full log in $dir/broker.log)"
    fi
    [ "$waited" -lt 600 ] || { tail -n 30 "$dir/broker.log" >&2; die "the broker did not listen on 127.0.0.1:$port within 60 s"; }
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "kafka.sh: Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (pid $(cat "$dir/broker.pid"), log $dir/broker.log)" >&2
}

stop() {
  local dir="${1:?usage: kafka.sh stop DIR}"
  [ -f "$dir/broker.pid" ] || die "no broker.pid in $dir: nothing started there"
  local pid
  pid="$(cat "$dir/broker.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/broker.pid"; return; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/broker.pid"
}

tool() {
  [ -f "$LIBS/.complete" ] || fetch >/dev/null
  local class="${1:?usage: kafka.sh tool CLASS ARGS...}"
  shift
  exec "$JAVA" -Xmx128m -Dlog4j2.level=ERROR -cp "$LIBS/*" "$class" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  topics) shift; tool org.apache.kafka.tools.TopicCommand "$@" ;;
  tool) shift; tool "$@" ;;
  run) shift; run "$@" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: kafka.sh fetch | run DIR PORT [ADVERTISED] | start DIR PORT | stop DIR | topics ARGS... | tool CLASS ARGS..." ;;
esac
