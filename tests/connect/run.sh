#!/usr/bin/env bash
# The connect page in a real browser: installs Debian's chromium and chromium-driver if they are
# missing (tests/connect/install.sh), starts the CRM emulators, every function (local-api, at the
# paths `make dev` serves) and chromedriver on free loopback ports, and runs
# tests/tests/connect_browser.rs against them (`--ignored`: a plain `cargo test` skips it). With
# CRM_SYNC_CONNECT_SCREENSHOT=docs/connect-page.png it saves a screenshot of the page there (the
# README's). Everything it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.sh

tests/connect/install.sh

build_tests
target="${CARGO_TARGET_DIR:-target}"

work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT

ports=()
for _ in 1 2 3 4 5 6 7; do ports+=("$(free_port)"); done
"$target/debug/crm-emulator" --hubspot "127.0.0.1:${ports[0]}" --salesforce "127.0.0.1:${ports[1]}" \
  --pipedrive "127.0.0.1:${ports[2]}" --zoho "127.0.0.1:${ports[3]}" --freshsales "127.0.0.1:${ports[4]}" \
  --dynamics "127.0.0.1:${ports[5]}" --sugarcrm "127.0.0.1:${ports[6]}" >"$work/emulator.log" 2>&1 &
pids+=($!)

# The OAuth apps the service has registered with Salesforce and Zoho: the emulators' clients.
mkdir -p "$work/data/connections" "$work/data/records" "$work/data/oauth-apps"
echo '{"clientId": "demo-salesforce-client", "clientSecret": "demo-salesforce-secret"}' >"$work/data/oauth-apps/salesforce.json"
echo '{"clientId": "1000.DEMOZOHOCLIENT", "clientSecret": "demo-zoho-client-secret"}' >"$work/data/oauth-apps/zoho.json"

api_port=$(free_port)
api_key="connect-test-key"
api="http://127.0.0.1:$api_port/lambda-url"
CRM_SYNC_STORE=local CRM_SYNC_DATA_DIR="$work/data" CRM_SYNC_API_KEY="$api_key" RUST_LOG=info \
  CRM_SYNC_CONNECT_PAGE_URL="$api/connect-page" CRM_SYNC_CONNECT_CALLBACK_URL="$api/connect-callback" \
  "$target/debug/local-api" --listen "127.0.0.1:$api_port" >"$work/api.log" 2>&1 &
pids+=($!)

driver_port=$(free_port)
chromedriver --port="$driver_port" >"$work/chromedriver.log" 2>&1 &
pids+=($!)
for port in "${ports[@]}" "$api_port" "$driver_port"; do wait_for_port "$port" 60; done

# cargo runs the test in the tests/ folder: the screenshot's path is made absolute here.
screenshot="${CRM_SYNC_CONNECT_SCREENSHOT:-}"
[ -z "$screenshot" ] || screenshot=$(realpath -m "$screenshot")
started=$(date +%s)
CONNECT_TEST_API="$api" CONNECT_TEST_API_KEY="$api_key" CONNECT_TEST_DRIVER="http://127.0.0.1:$driver_port" \
  CONNECT_TEST_DATA_DIR="$work/data" CONNECT_TEST_LOGS="$work/api.log $work/emulator.log" \
  CONNECT_TEST_SCREENSHOT="$screenshot" \
  CONNECT_TEST_HUBSPOT="http://127.0.0.1:${ports[0]}" CONNECT_TEST_SALESFORCE="http://127.0.0.1:${ports[1]}" \
  CONNECT_TEST_PIPEDRIVE="http://127.0.0.1:${ports[2]}" CONNECT_TEST_ZOHO="http://127.0.0.1:${ports[3]}" \
  CONNECT_TEST_FRESHSALES="http://127.0.0.1:${ports[4]}" \
  cargo test --quiet --locked --workspace --test connect_browser -- --ignored --nocapture || {
  echo "--- local-api log"; tail -40 "$work/api.log"; echo "--- chromedriver log"; tail -20 "$work/chromedriver.log"
  exit 1
}
echo "connect browser test: $(( $(date +%s) - started )) s in Chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
