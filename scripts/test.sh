#!/usr/bin/env bash
# Every test of the workspace, on a fresh machine too: installs moto (the AWS emulator), cfn-lint,
# the SAM CLI and openapi-spec-validator from PyPI if missing, validates openapi.yaml and the SAM
# template, starts moto_server on a free loopback port, runs the tests, and stops moto whatever
# happens; then fuzzes the API against openapi.yaml with Schemathesis (tests/fuzz/run.sh, which
# installs its pinned Schemathesis from PyPI once), runs the example n8n workflows in a real n8n
# (tests/n8n/run.sh, which installs its pinned n8n from the npm registry once), and the connect page
# in headless Chromium (tests/connect/run.sh, which installs Debian's chromium and chromium-driver once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

ensure_tool moto_server 'moto[server]'
ensure_tool cfn-lint cfn-lint
ensure_tool sam aws-sam-cli
ensure_tool openapi-spec-validator openapi-spec-validator

port=$(free_port)
moto_log=$(mktemp)
moto_server -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"' EXIT
wait_for_port "$port" 30 || { cat "$moto_log"; exit 1; }
echo "moto_server on 127.0.0.1:$port"

export CRM_SYNC_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
# The SDK must never find real credentials or a real region while testing.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

cfn-lint infra/template.yaml
echo "cfn-lint: infra/template.yaml has no errors or warnings"
openapi-spec-validator openapi.yaml
# SAM's own validation (transform + cfn-lint); it runs offline. samconfig.toml names the template.
SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1
log=$(mktemp)
trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log" "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
# The contract fuzzed: every answer as openapi.yaml says, valid requests accepted, invalid refused.
tests/fuzz/run.sh
# The n8n workflows in a real n8n, against the functions just tested (needs Node.js 20).
tests/n8n/run.sh
# The connect page in headless Chromium, against the same functions and the emulators.
tests/connect/run.sh
