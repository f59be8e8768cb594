#!/usr/bin/env bash
# One lock for the whole WebSocket connection (`ownsplit`) against the build before it
# (`05a9d2f`, futures' split: a BiLock under the write half's lock): 1000 x 50 embedded
# (8 interleaved passes), through Apache Kafka at the four loads of issue 20 (3 passes), then
# 1000 x 50 alone through Kafka (8 passes). Clients offer permessage-deflate.
#   BEFORE=path/to/flux-bff AFTER=path/to/flux-bff LOADGEN=path/to/flux-loadgen \
#   bash bench/2026-12-07-split/series.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?}" "${AFTER:?}" "${LOADGEN:?}"
here=bench/2026-12-07-split
A=$BEFORE B=$AFTER OUT=$here/embedded-1000x50 PASSES=8 CLIENTS=1000 RATE=50 LOADGEN_ARGS=--deflate \
  bash bench/ab-fanout.sh | tail -4
OUT=$here/kafka PASSES=3 bash bench/2026-12-06-issue20/run.sh
python3 bench/2026-12-06-issue20/table.py $here/kafka
OUT=$here/kafka-1000x50 PASSES=8 bash bench/2026-12-07-direct/kafka-low-rate.sh
