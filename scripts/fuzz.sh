#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (libFuzzer through cargo-fuzz, nightly Rust) for
# FUZZ_SECONDS each (default 20), starting from the corpus in fuzz/corpus/<target>; new inputs
# go to a temporary directory, so the repository is not modified. Fails on the first crash,
# naming the input that caused it (saved under fuzz/artifacts/<target>/) and how to replay it.
#
#   scripts/fuzz.sh                      # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=600 scripts/fuzz.sh event_record   # one target, longer
#   FUZZ_KEEP=1 scripts/fuzz.sh          # grow fuzz/corpus/<target> with what is found
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo fuzz needs the nightly toolchain; installing it (rustup toolchain install nightly)" >&2
  rustup toolchain install nightly --profile minimal \
    || { echo "fuzz.sh: no nightly toolchain and rustup could not install one: install it with 'rustup toolchain install nightly'" >&2; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz 0.13.2 (cargo install, about 2 minutes)" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
echo "fuzz.sh: building ${targets[*]} (release, sanitizer; several minutes the first time)"
cargo +nightly fuzz build -O

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  [ -d "$corpus" ] || { echo "fuzz.sh: no corpus for $target in $corpus" >&2; exit 1; }
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then new="$corpus"; else new="$(mktemp -d)"; fi
  echo "fuzz.sh: $target for ${seconds}s from $(ls "$corpus" | wc -l) inputs"
  if ! cargo +nightly fuzz run -O "$target" "$new" "$corpus" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"fuzz/$target.log"; then
    tail -n 40 "fuzz/$target.log" >&2
    echo "fuzz.sh: $target FAILED: the input is in fuzz/artifacts/$target/ (full log fuzz/$target.log);" \
      "replay it with: cargo +nightly fuzz run -O $target fuzz/artifacts/$target/<file>" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "fuzz/$target.log" | tail -n 2
  [ "$new" = "$corpus" ] || rm -rf "$new"
  rm -f "fuzz/$target.log"
done
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each: no crash"
