#!/usr/bin/env bash
# The example workflows in a real n8n: installs the pinned n8n once (tests/n8n/install.sh), starts
# the HubSpot emulator and every function (local-api) on free loopback ports, imports the credential
# template and both workflows pointed at them, publishes the workflows, starts n8n on loopback and
# posts bookings and leads to its webhooks (tests/n8n/webhooks.mjs). Everything it starts is stopped
# when it ends; it fails on the first failed assertion.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.sh

tests/n8n/install.sh
n8n="${CRM_SYNC_N8N_DIR:-$PWD/.cache/n8n}/node_modules/.bin/n8n"

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

# Every emulator on a port of its own, so a running `make dev` is left alone.
ports=()
for _ in 1 2 3 4 5 6 7; do ports+=("$(free_port)"); done
hubspot_port=${ports[0]}
"$target/debug/crm-emulator" --hubspot "127.0.0.1:${ports[0]}" --salesforce "127.0.0.1:${ports[1]}" \
  --pipedrive "127.0.0.1:${ports[2]}" --zoho "127.0.0.1:${ports[3]}" --freshsales "127.0.0.1:${ports[4]}" \
  --dynamics "127.0.0.1:${ports[5]}" --sugarcrm "127.0.0.1:${ports[6]}" >"$work/emulator.log" 2>&1 &
pids+=($!)

mkdir -p "$work/data/connections" "$work/data/records"
cat >"$work/data/connections/demo-hubspot.json" <<EOF
{"crmType": "hubspot", "credentials": {"accessToken": "demo-hubspot-token"},
 "settings": {"baseUrl": "http://127.0.0.1:$hubspot_port", "defaultTimezone": "America/New_York", "defaultCountry": "US"}}
EOF
api_port=$(free_port)
api_key="n8n-test-key"
CRM_SYNC_STORE=local CRM_SYNC_DATA_DIR="$work/data" CRM_SYNC_API_KEY="$api_key" RUST_LOG=warn \
  "$target/debug/local-api" --listen "127.0.0.1:$api_port" >"$work/api.log" 2>&1 &
api_pid=$!
pids+=("$api_pid")

# The shipped files with what a user edits: the API base URL, the connection id, the key.
mkdir -p "$work/import"
for workflow in voice-booking-to-crm voice-lead-to-crm; do
  sed -e "s#https://YOUR-API-ID.execute-api.us-east-1.amazonaws.com/dev/api/v1/integrations/crm#http://127.0.0.1:$api_port/lambda-url#" \
    -e "s/'acme-hubspot'/'demo-hubspot'/" "examples/n8n/$workflow.json" >"$work/import/$workflow.json"
done
sed -e "s/REPLACE-WITH-YOUR-CRM-SYNC-API-KEY/$api_key/" examples/n8n/crm-sync-credential.json >"$work/credential.json"

n8n_port=$(free_port)
export N8N_USER_FOLDER="$work/n8n" N8N_ENCRYPTION_KEY="crm-sync-n8n-test" \
  N8N_LISTEN_ADDRESS=127.0.0.1 N8N_HOST=127.0.0.1 N8N_PORT="$n8n_port" \
  N8N_DIAGNOSTICS_ENABLED=false N8N_VERSION_NOTIFICATIONS_ENABLED=false N8N_TEMPLATES_ENABLED=false \
  N8N_PERSONALIZATION_ENABLED=false N8N_HIRING_BANNER_ENABLED=false N8N_LOG_LEVEL=warn \
  N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=false
# The order a user follows: the credential first, since the workflows name it by id.
"$n8n" import:credentials --input="$work/credential.json"
"$n8n" import:workflow --separate --input="$work/import"
for id in crmSyncBooking01 crmSyncLead00001; do "$n8n" publish:workflow --id="$id"; done

"$n8n" start >"$work/n8n.log" 2>&1 &
pids+=($!)
for port in "$hubspot_port" "$api_port" "$n8n_port"; do wait_for_port "$port" 120; done

N8N_URL="http://127.0.0.1:$n8n_port" HUBSPOT_URL="http://127.0.0.1:$hubspot_port" API_PID="$api_pid" \
  node tests/n8n/webhooks.mjs || {
  echo "--- n8n log"; tail -50 "$work/n8n.log"; echo "--- local-api log"; tail -20 "$work/api.log"
  exit 1
}
