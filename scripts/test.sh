#!/usr/bin/env bash
# Every test of the workspace, on a fresh machine too. It starts compiling the tests, installing n8n
# (tests/n8n/install.sh) and installing Chromium (tests/connect/install.sh) at once, in the
# background: the build is bound by the CPU, the installs mostly by downloads. Meanwhile it installs
# moto (the AWS emulator), cfn-lint, the SAM CLI, openapi-spec-validator and Schemathesis from PyPI if
# missing (one after another: pip installs into one Python), validates openapi.yaml and the SAM
# template, and starts moto_server on a free loopback port. Then it runs the tests, fuzzes the API
# against openapi.yaml with Schemathesis (tests/fuzz/run.sh), runs the example n8n workflows in a
# real n8n (tests/n8n/run.sh) and the connect page in headless Chromium (tests/connect/run.sh). It
# stops whatever it started, whatever happens, and prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

work=$(mktemp -d)
background=()
cleanup() {
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
steps=""
step_done() { steps="$steps, $1 $((SECONDS - $2)) s"; }

# Waits for a background step and prints its output; a failed step fails the run.
finish() {
  local name=$1 pid=$2 status=0
  wait "$pid" || status=$?
  cat "$work/$name.log"
  [ "$status" -eq 0 ] || { echo "$name failed (exit $status)" >&2; exit "$status"; }
}

started=$SECONDS
build_tests >"$work/build.log" 2>&1 &
build_pid=$!
tests/n8n/install.sh >"$work/n8n-install.log" 2>&1 &
n8n_install_pid=$!
tests/connect/install.sh >"$work/chromium-install.log" 2>&1 &
chromium_install_pid=$!
background+=("$build_pid" "$n8n_install_pid" "$chromium_install_pid")

ensure_tool moto_server 'moto[server]'
ensure_tool cfn-lint cfn-lint
ensure_tool sam aws-sam-cli
ensure_tool openapi-spec-validator openapi-spec-validator
tests/fuzz/install.sh
step_done "Python tools" "$started"

start_moto "$work/moto.log"
background+=("$moto_pid")

cfn-lint infra/template.yaml
echo "cfn-lint: infra/template.yaml has no errors or warnings"
openapi-spec-validator openapi.yaml
# SAM's own validation (transform + cfn-lint); it runs offline. samconfig.toml names the template.
SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1

finish build "$build_pid"
step_done "build" "$started"
phase=$SECONDS
status=0
# Most tests wait on emulated timeouts, lost answers and soaks rather than on the CPU, so
# cargo-nextest (on the machine with the Rust toolchain) runs six at a time, each in its own
# process; cargo test, where nextest is missing, runs one test binary after another.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --test-threads 6 --no-fail-fast 2>&1 | tee "$work/test.log" || status=$?
else
  cargo test --workspace --locked 2>&1 | tee "$work/test.log" || status=$?
fi
# One closing line for the whole run: nextest's summary, or cargo test's results summed.
awk '/^test result:|^ *Summary \[/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$work/test.log"
[ "$status" -eq 0 ] || exit "$status"
step_done "workspace tests" "$phase"
# The contract fuzzed: every answer as openapi.yaml says, valid requests accepted, invalid refused.
phase=$SECONDS
tests/fuzz/run.sh
step_done "Schemathesis" "$phase"
# The n8n workflows in a real n8n, against the functions just tested (needs Node.js 20).
phase=$SECONDS
finish n8n-install "$n8n_install_pid"
tests/n8n/run.sh
step_done "n8n" "$phase"
# The connect page in headless Chromium, against the same functions and the emulators.
phase=$SECONDS
finish chromium-install "$chromium_install_pid"
tests/connect/run.sh
step_done "Chromium" "$phase"
echo "make test: passed in $((SECONDS - started)) s (${steps#, })"
