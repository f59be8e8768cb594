#!/usr/bin/env bash
# Regenerates vendor/<crate>.patch: the whole difference between each vendored fork and the
# crates.io release it was forked from (downloaded once into ~/.cache/flux-bff/crates), as
# `diff -ru a/ b/` (files the fork added included, files it left out not), without lock files, upstream's benches and cargo's packaging files.
# Run after changing anything under vendor/; CI does not run it (the patches are documentation).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flux-bff/crates"
mkdir -p "$cache"
for dir in vendor/*/; do
  name=$(basename "$dir")
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  release="$cache/$name-$version"
  if [ ! -d "$release" ]; then
    echo "downloading $name $version from crates.io" >&2
    curl -fsSL "https://static.crates.io/crates/$name/$name-$version.crate" | tar xz -C "$cache" ||
      { echo "cannot download $name $version: check the network or the version in $dir/Cargo.toml" >&2; exit 1; }
  fi
  work=$(mktemp -d)
  ln -s "$release" "$work/a"
  ln -s "$(pwd)/$dir" "$work/b"
  (cd "$work" && diff -ru --unidirectional-new-file -x Cargo.lock -x .cargo-ok -x benches -x target -x .cargo_vcs_info.json \
    -x Cargo.toml.orig -x '*.patch' a/ b/ | grep -v "^Only in a/") >"vendor/$name.patch" || true
  rm -rf "$work"
  echo "vendor/$name.patch: $(grep -c '^diff ' "vendor/$name.patch") files" >&2
done
