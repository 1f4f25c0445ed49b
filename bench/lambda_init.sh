#!/usr/bin/env bash
# Lambda-mode start-up and size figures of the release build, on this machine:
#   - binary size (stripped), and gzip -9 size as a stand-in for the deployment zip;
#   - init time: from exec of the binary to its first GET /2018-06-01/runtime/invocation/next
#     against a local runtime API (examples/lambda_init.rs, which reuses the tests' emulator),
#     with an S3 store and the AWS environment Lambda gives a function (nothing is reachable:
#     init must not need the network);
#   - the first invocation (GET /v2/ as an API Gateway HTTP API event).
# Usage: bench/lambda_init.sh [runs]   (default 30). Results are recorded in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-30}"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/pullthrough"
# The measuring program itself is built in the dev profile (its speed is not measured).
cargo build --quiet --example lambda_init

size=$(stat -c %s "$BIN")
gz=$(gzip -9 -c "$BIN" | wc -c)
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sm)"
echo "rustc:   $(rustc --version)"
echo "command: bench/lambda_init.sh $RUNS"
echo "binary:  $BIN ($(file -b "$BIN" | grep -o 'stripped\|not stripped'))"
awk -v s="$size" -v g="$gz" 'BEGIN {
  printf "size:    %d bytes (%.2f MB, %.2f MiB); gzip -9: %d bytes (%.2f MB)\n", s, s/1e6, s/1048576, g, g/1e6
}'
cargo run --quiet --example lambda_init -- "$BIN" "$RUNS"
