#!/usr/bin/env bash
# Runs the API locally: the CRM emulators (HubSpot on 127.0.0.1:4010, Zoho CRM on 127.0.0.1:4013),
# the functions under `cargo lambda watch` on 127.0.0.1:9000, connections and records under .local/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

ensure_tool cargo-lambda cargo-lambda

data_dir="$PWD/.local"
mkdir -p "$data_dir/connections" "$data_dir/records"
demo="$data_dir/connections/demo-hubspot.json"
if [ ! -f "$demo" ]; then
  cat >"$demo" <<'JSON'
{
  "crmType": "hubspot",
  "credentials": { "accessToken": "demo-hubspot-token" },
  "settings": {
    "baseUrl": "http://127.0.0.1:4010",
    "defaultTimezone": "America/New_York",
    "defaultCountry": "US"
  }
}
JSON
  echo "created the demo-hubspot connection in $demo"
fi
# Zoho: the emulator's client and refresh token; its accounts server and API are the emulator.
# The first call fetches an access token and writes it (with its expiry) back to this file.
demo_zoho="$data_dir/connections/demo-zoho.json"
if [ ! -f "$demo_zoho" ]; then
  cat >"$demo_zoho" <<'JSON'
{
  "crmType": "zoho",
  "credentials": {
    "clientId": "1000.DEMOZOHOCLIENT",
    "clientSecret": "demo-zoho-client-secret",
    "refreshToken": "1000.demo-zoho-refresh-token"
  },
  "settings": {
    "accountsUrl": "http://127.0.0.1:4013",
    "baseUrl": "http://127.0.0.1:4013",
    "defaultLeadCompany": "Walk-in",
    "defaultTimezone": "America/New_York",
    "defaultCountry": "US"
  }
}
JSON
  echo "created the demo-zoho connection in $demo_zoho"
fi

cargo build --quiet -p crm-sync-tests --bin crm-emulator
./target/debug/crm-emulator --hubspot 127.0.0.1:4010 --zoho 127.0.0.1:4013 --state "$data_dir/emulator" &
emulator_pid=$!
trap 'kill "$emulator_pid" 2>/dev/null || true' EXIT
wait_for_port 4010 30
wait_for_port 4013 30

export CRM_SYNC_STORE=local
export CRM_SYNC_DATA_DIR="$data_dir"
export CRM_SYNC_API_KEY="${CRM_SYNC_API_KEY:-local-dev-key}"
export RUST_LOG="${RUST_LOG:-info}"
echo "API: http://127.0.0.1:9000/lambda-url/<function>/ with header x-api-key: $CRM_SYNC_API_KEY"
cargo lambda watch -A 127.0.0.1 -P 9000
