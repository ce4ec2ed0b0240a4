#!/usr/bin/env bash
# Runs the API locally: the CRM emulators (HubSpot 127.0.0.1:4010, Salesforce :4011, Pipedrive :4012,
# Zoho CRM :4013, Freshsales :4014, Dynamics 365 :4015, SugarCRM :4016), the functions under `cargo lambda watch` on 127.0.0.1:9000,
# connections and records under .local/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

ensure_tool cargo-lambda cargo-lambda

data_dir="$PWD/.local"
mkdir -p "$data_dir/records"
demo_connections "$data_dir" 127.0.0.1:4010 127.0.0.1:4011 127.0.0.1:4012 127.0.0.1:4013 127.0.0.1:4014 \
  127.0.0.1:4015 127.0.0.1:4016

# Connect links: the OAuth apps the connect page signs in with (the emulators' clients), and the
# page's and callback's addresses, which deployed come from API Gateway.
mkdir -p "$data_dir/oauth-apps"
[ -f "$data_dir/oauth-apps/salesforce.json" ] ||
  echo '{"clientId": "demo-salesforce-client", "clientSecret": "demo-salesforce-secret"}' >"$data_dir/oauth-apps/salesforce.json"
[ -f "$data_dir/oauth-apps/zoho.json" ] ||
  echo '{"clientId": "1000.DEMOZOHOCLIENT", "clientSecret": "demo-zoho-client-secret"}' >"$data_dir/oauth-apps/zoho.json"
export CRM_SYNC_CONNECT_PAGE_URL="${CRM_SYNC_CONNECT_PAGE_URL:-http://127.0.0.1:9000/lambda-url/connect-page}"
export CRM_SYNC_CONNECT_CALLBACK_URL="${CRM_SYNC_CONNECT_CALLBACK_URL:-http://127.0.0.1:9000/lambda-url/connect-callback}"

cargo build --quiet -p crm-sync-tests --bin crm-emulator
./target/debug/crm-emulator --hubspot 127.0.0.1:4010 --salesforce 127.0.0.1:4011 --pipedrive 127.0.0.1:4012 \
  --zoho 127.0.0.1:4013 --freshsales 127.0.0.1:4014 --dynamics 127.0.0.1:4015 --sugarcrm 127.0.0.1:4016 \
  --state "$data_dir/emulator" &
emulator_pid=$!
trap 'kill "$emulator_pid" 2>/dev/null || true' EXIT
for port in 4010 4011 4012 4013 4014 4015 4016; do wait_for_port "$port" 30; done

export CRM_SYNC_STORE=local
export CRM_SYNC_DATA_DIR="$data_dir"
export CRM_SYNC_API_KEY="${CRM_SYNC_API_KEY:-local-dev-key}"
export RUST_LOG="${RUST_LOG:-info}"
echo "API: http://127.0.0.1:9000/lambda-url/<function>/ with header x-api-key: $CRM_SYNC_API_KEY"
echo "Connect links: POST http://127.0.0.1:9000/lambda-url/connect-sessions/ (README: Connect a CRM from a browser)"
echo "One pass of the scheduled sync (what sync-batch queued, failed work):"
echo "  cargo lambda invoke -A 127.0.0.1 -P 9000 scheduled-sync --data-example eventbridge-schedule"
cargo lambda watch -A 127.0.0.1 -P 9000
