#!/usr/bin/env bash
# Fuzzes the frame decoder and the TLS and WebSocket receive paths for FUZZ_SECONDS each
# (default 60) and fails if any finds a crash.
#
# cargo-fuzz needs unstable compiler flags; only a stable toolchain is assumed, so they are
# unlocked with RUSTC_BOOTSTRAP=1. AddressSanitizer is used when the toolchain can build with
# it, otherwise the target is built without a sanitizer (`-s none`): libFuzzer's coverage
# guidance still works, and the decoder has no unsafe code for ASan to watch.
#
# New inputs go to a temporary directory; the committed seed corpus (fuzz/corpus/decode, made of
# the golden vectors of docs/protocol.md; fuzz/corpus/tls, a ClientHello and a few records;
# fuzz/corpus/ws, an upgrade and a few frames) is only read. A crash leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
# cargo-fuzz looks for the target it built under fuzz/target.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

sanitizer=address
if ! cargo fuzz build --sanitizer "$sanitizer" decode; then
  echo "fuzz: this toolchain cannot build with AddressSanitizer; building without a sanitizer"
  sanitizer=none
  cargo fuzz build --sanitizer "$sanitizer" decode
fi
cargo fuzz build --sanitizer "$sanitizer" tls
cargo fuzz build --sanitizer "$sanitizer" ws

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# decode: the frame decoder; tls: the bytes a TLS connection receives (handshake and records);
# ws: the bytes a WebSocket connection receives (the upgrade's head and frames).
for target in decode tls ws; do
  mkdir "$scratch/$target"
  echo "fuzz: running the $target target for ${seconds}s (sanitizer: $sanitizer)"
  # libFuzzer reports every new input; keep that in a log and show its end.
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    tail -n 80 "$scratch/$target.log"
    echo "fuzz: the $target target crashed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::)' "$scratch/$target.log" || true
  echo "fuzz: $target: no crash in ${seconds}s"
done
