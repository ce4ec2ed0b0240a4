#!/usr/bin/env bash
# Runs the API locally: the CRM emulators (HubSpot 127.0.0.1:4010, Salesforce :4011, Pipedrive :4012,
# Zoho CRM :4013, Freshsales :4014, Dynamics 365 :4015, SugarCRM :4016), the functions under `cargo lambda watch` on 127.0.0.1:9000,
# connections and records under .local/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

ensure_tool cargo-lambda cargo-lambda

data_dir="$PWD/.local"
mkdir -p "$data_dir/connections" "$data_dir/records"

# demo_connection ID JSON: writes the connection once; an edited one is kept across restarts.
demo_connection() {
  local file="$data_dir/connections/$1.json"
  if [ ! -f "$file" ]; then
    printf '%s\n' "$2" >"$file"
    echo "created the $1 connection in $file"
  fi
}
demo_settings='"defaultTimezone": "America/New_York", "defaultCountry": "US"'
demo_connection demo-hubspot "{\"crmType\": \"hubspot\", \"credentials\": {\"accessToken\": \"demo-hubspot-token\"},
  \"settings\": {\"baseUrl\": \"http://127.0.0.1:4010\", $demo_settings}}"
demo_connection demo-pipedrive "{\"crmType\": \"pipedrive\", \"credentials\": {\"apiToken\": \"demo-pipedrive-token\"},
  \"settings\": {\"companyDomain\": \"crm-sync-demo\", \"baseUrl\": \"http://127.0.0.1:4012\", $demo_settings}}"
demo_connection demo-freshsales "{\"crmType\": \"freshsales\", \"credentials\": {\"apiKey\": \"demo-freshsales-key\"},
  \"settings\": {\"baseUrl\": \"http://127.0.0.1:4014\", $demo_settings}}"
# The Salesforce emulator is both the login host and the instance; the first call refreshes the
# session and writes the access token and instanceUrl back to the connection file.
demo_connection demo-salesforce "{\"crmType\": \"salesforce\", \"credentials\": {\"clientId\": \"demo-salesforce-client\",
  \"clientSecret\": \"demo-salesforce-secret\", \"refreshToken\": \"demo-salesforce-refresh-token\"},
  \"settings\": {\"loginUrl\": \"http://127.0.0.1:4011\", $demo_settings}}"
# Zoho: the emulator is both the accounts server and the API; the first call fetches an access token
# and writes it (with its expiry) back to the connection file.
demo_connection demo-zoho "{\"crmType\": \"zoho\", \"credentials\": {\"clientId\": \"1000.DEMOZOHOCLIENT\",
  \"clientSecret\": \"demo-zoho-client-secret\", \"refreshToken\": \"1000.demo-zoho-refresh-token\"},
  \"settings\": {\"accountsUrl\": \"http://127.0.0.1:4013\", \"baseUrl\": \"http://127.0.0.1:4013\",
  \"defaultLeadCompany\": \"Walk-in\", $demo_settings}}"
# Dynamics 365: the emulator is both Entra ID's token endpoint and the environment; the first call
# asks for a token and writes it (with its expiry) back to the connection file.
demo_connection demo-dynamics "{\"crmType\": \"dynamics\", \"credentials\": {\"clientId\": \"demo-dynamics-client\",
  \"clientSecret\": \"demo-dynamics-secret\"}, \"settings\": {\"environmentUrl\": \"http://127.0.0.1:4015\",
  \"tenantId\": \"demo-tenant.onmicrosoft.com\", \"authorityUrl\": \"http://127.0.0.1:4015\", $demo_settings}}"
# SugarCRM: the first call logs in with the password grant and writes the tokens back.
demo_connection demo-sugarcrm "{\"crmType\": \"sugarcrm\", \"credentials\": {\"username\": \"demo-sugar-user\",
  \"password\": \"demo-sugar-password\"}, \"settings\": {\"instanceUrl\": \"http://127.0.0.1:4016\", $demo_settings}}"

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
