#!/bin/sh
# The images' %test: run the quickstart example under a fresh `flux start`, with the Flux
# backend, and check that it succeeds and every task's result was recorded.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/versions.sh"
run_dir=$(mktemp -d /tmp/matensemble-test.XXXXXX)
trap 'rm -rf "$run_dir"' EXIT
flux start --test-size=1 matensemble run --backend flux --no-progress \
  --run-dir "$run_dir/run" "$MATENSEMBLE_SRC/examples/quickstart/ensemble.toml"
test -s "$run_dir/run/tasks/report/summary.json"
echo "quickstart under flux start: ok"
