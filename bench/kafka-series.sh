# Sourced (not run) by the benchmark series through Apache Kafka, from the repository root:
# starts one broker (scripts/kafka.sh) on a free loopback port for the whole series, stops it
# and removes its data when the script exits, and sets `k`, the load generator's arguments
# that point at it (clients offering permessage-deflate, as browsers do).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
bash scripts/kafka.sh start "$dir" "$port"
trap 'bash scripts/kafka.sh stop "$dir"; rm -rf "$dir"' EXIT
# shellcheck disable=SC2034 # used by the sourcing script
k=(--deflate --kafka "127.0.0.1:$port")
