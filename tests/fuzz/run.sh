#!/usr/bin/env bash
# Fuzzes the contract: Schemathesis (the version tests/fuzz/install.sh pins, from PyPI if missing)
# sends requests generated from openapi.yaml and its examples, valid and invalid, to every
# function. local-api serves them as API Gateway and the Lambda runtime deliver them, against the
# CRM emulators and the local stores, with a connection per CRM seeded (tests/fuzz/schemathesis.toml
# names them, so most requests reach the CRM adapters). Fails on a 5xx, an answer openapi.yaml does
# not describe, a valid request refused or an invalid one accepted (not refused with 400).
# Bounded by --max-examples (CRM_SYNC_FUZZ_EXAMPLES) and deterministic generation. Stops what it
# starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
source scripts/tools.sh

tests/fuzz/install.sh

build_tests
target="${CARGO_TARGET_DIR:-$root/target}"

work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT

# Every emulator on a port of its own, so a running `make dev` is left alone.
emulators=()
for _ in 1 2 3 4 5 6 7; do emulators+=("127.0.0.1:$(free_port)"); done
"$target/debug/crm-emulator" --hubspot "${emulators[0]}" --salesforce "${emulators[1]}" \
  --pipedrive "${emulators[2]}" --zoho "${emulators[3]}" --freshsales "${emulators[4]}" \
  --dynamics "${emulators[5]}" --sugarcrm "${emulators[6]}" >"$work/emulator.log" 2>&1 &
pids+=($!)
demo_connections "$work/data" "${emulators[@]}" >/dev/null

api_port=$(free_port)
api_key="fuzz-test-key"
# test-connection with inline credentials calls the CRM's real host: a proxy that refuses every
# connection keeps it off the internet (the answer is ok: false); loopback goes direct.
CRM_SYNC_STORE=local CRM_SYNC_DATA_DIR="$work/data" CRM_SYNC_API_KEY="$api_key" RUST_LOG=warn \
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 \
  NO_PROXY=127.0.0.1,localhost \
  "$target/debug/local-api" --listen "127.0.0.1:$api_port" >"$work/api.log" 2>&1 &
pids+=($!)
for address in "${emulators[@]}"; do wait_for_port "${address##*:}" 60; done
wait_for_port "$api_port" 60

started=$SECONDS
status=0
# From the work folder, so the run's cache stays out of the checkout.
(cd "$work" && SCHEMATHESIS_HOOKS="$root/tests/fuzz/hooks.py" schemathesis \
  --config-file "$root/tests/fuzz/schemathesis.toml" run "$root/openapi.yaml" \
  --url "http://127.0.0.1:$api_port/lambda-url" --header "x-api-key: $api_key" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,positive_data_acceptance,negative_data_rejection \
  --phases examples,coverage,fuzzing --max-examples "${CRM_SYNC_FUZZ_EXAMPLES:-60}" \
  --generation-deterministic --workers 1 --no-color) >"$work/schemathesis.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  cat "$work/schemathesis.log"
  echo "--- local-api log"
  tail -30 "$work/api.log"
fi
# One closing line: Schemathesis' own count of test cases, and the refusals hooks.py accepted.
cases=$(grep -Eo '[0-9]+ generated[^=]*' "$work/schemathesis.log" | tail -1 | sed 's/ *$//')
filtered=$(grep -Eo 'Filtered: [0-9]+' "$work/schemathesis.log" | grep -Eo '[0-9]+' || echo 0)
verdict=passed
[ "$status" -eq 0 ] || verdict=FAILED
echo "schemathesis: $verdict, ${cases:-no test cases}, $filtered refusals of prose rules accepted, in $((SECONDS - started))s"
exit "$status"
