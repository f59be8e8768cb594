#!/usr/bin/env bash
# This pass's changes (review findings: a broadcast's prefetch window, the snapshot gate, the
# catch-up gate, the close handshake, and the Kafka consumer's fetch with compression,
# read-committed transactions and positions) against the build before them (`3050236`):
# through Apache Kafka at the four loads of issue 20 (3 passes), then 1000 x 50 alone through
# Kafka (8 passes). Clients offer permessage-deflate.
#   BEFORE=path/to/flux-bff AFTER=path/to/flux-bff LOADGEN=path/to/flux-loadgen \
#   bash bench/2026-12-07-review/series.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?}" "${AFTER:?}" "${LOADGEN:?}"
here=bench/2026-12-07-review
OUT=$here/kafka PASSES=3 bash bench/2026-12-06-issue20/run.sh
python3 bench/2026-12-06-issue20/table.py $here/kafka
OUT=$here/kafka-1000x50 PASSES=8 bash bench/2026-12-07-direct/kafka-low-rate.sh
