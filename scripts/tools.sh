# Shell helpers sourced by dev.sh, test.sh and the test scripts under tests/.

# Installs a Python-packaged tool the project needs, once, into the user's Python:
# `ensure_tool COMMAND PIP_SPEC`.
ensure_tool() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (provides $1)"
    python3 -m pip install --quiet --disable-pip-version-check "$2"
    hash -r
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "$1 is still missing after installing $2" >&2; exit 1; }
}

# Builds every test of the workspace and the tools they start (the CRM emulators, local-api) without
# running them. Every script builds them this one way: another package selection would unify
# features differently and build the same binaries again.
build_tests() {
  cargo test --quiet --locked --workspace --no-run
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until http://127.0.0.1:$1/ answers (any status), up to $2 seconds.
wait_for_port() {
  local port=$1 seconds=$2
  for _ in $(seq $((seconds * 10))); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing answered on 127.0.0.1:$port after ${seconds}s" >&2
  return 1
}

# Starts moto_server on a free loopback port, its log in $1, and waits until it answers; sets
# moto_pid. Points the tests' AWS at it: CRM_SYNC_TEST_AWS_ENDPOINT, and credentials and a region
# that are not real.
start_moto() {
  local log=$1 port
  port=$(free_port)
  moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  moto_pid=$!
  wait_for_port "$port" 30 || { cat "$log"; exit 1; }
  echo "moto_server on 127.0.0.1:$port"
  export CRM_SYNC_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
  # The SDK must never find real credentials or a real region while testing.
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  unset AWS_PROFILE AWS_SESSION_TOKEN
}

# The demo connection of every CRM, each pointed at its emulator, as JSON files in DIR/connections
# (the local connection store). A file already there is kept, so an edited connection survives
# restarts. `demo_connections DIR HUBSPOT SALESFORCE PIPEDRIVE ZOHO FRESHSALES DYNAMICS SUGARCRM`, each
# emulator as HOST:PORT.
demo_connections() {
  local dir=$1/connections
  local hubspot=http://$2 salesforce=http://$3 pipedrive=http://$4 zoho=http://$5 freshsales=http://$6
  local dynamics=http://$7 sugarcrm=http://$8
  local defaults='"defaultTimezone": "America/New_York", "defaultCountry": "US"'
  mkdir -p "$dir"
  demo_connection() {
    if [ ! -f "$dir/$1.json" ]; then
      printf '%s\n' "$2" >"$dir/$1.json"
      echo "created the $1 connection in $dir/$1.json"
    fi
  }
  demo_connection demo-hubspot "{\"crmType\": \"hubspot\", \"credentials\": {\"accessToken\": \"demo-hubspot-token\"},
  \"settings\": {\"baseUrl\": \"$hubspot\", $defaults}}"
  demo_connection demo-pipedrive "{\"crmType\": \"pipedrive\", \"credentials\": {\"apiToken\": \"demo-pipedrive-token\"},
  \"settings\": {\"companyDomain\": \"crm-sync-demo\", \"baseUrl\": \"$pipedrive\", $defaults}}"
  demo_connection demo-freshsales "{\"crmType\": \"freshsales\", \"credentials\": {\"apiKey\": \"demo-freshsales-key\"},
  \"settings\": {\"baseUrl\": \"$freshsales\", $defaults}}"
  # The Salesforce emulator is both the login host and the instance; the first call refreshes the
  # session and writes the access token and instanceUrl back to the connection file.
  demo_connection demo-salesforce "{\"crmType\": \"salesforce\", \"credentials\": {\"clientId\": \"demo-salesforce-client\",
  \"clientSecret\": \"demo-salesforce-secret\", \"refreshToken\": \"demo-salesforce-refresh-token\"},
  \"settings\": {\"loginUrl\": \"$salesforce\", $defaults}}"
  # Zoho: the emulator is both the accounts server and the API; the first call fetches an access
  # token and writes it (with its expiry) back to the connection file.
  demo_connection demo-zoho "{\"crmType\": \"zoho\", \"credentials\": {\"clientId\": \"1000.DEMOZOHOCLIENT\",
  \"clientSecret\": \"demo-zoho-client-secret\", \"refreshToken\": \"1000.demo-zoho-refresh-token\"},
  \"settings\": {\"accountsUrl\": \"$zoho\", \"baseUrl\": \"$zoho\",
  \"defaultLeadCompany\": \"Walk-in\", $defaults}}"
  # Dynamics 365: the emulator is both Entra ID's token endpoint and the environment; the first call
  # asks for a token and writes it (with its expiry) back to the connection file.
  demo_connection demo-dynamics "{\"crmType\": \"dynamics\", \"credentials\": {\"clientId\": \"demo-dynamics-client\",
  \"clientSecret\": \"demo-dynamics-secret\"}, \"settings\": {\"environmentUrl\": \"$dynamics\",
  \"tenantId\": \"demo-tenant.onmicrosoft.com\", \"authorityUrl\": \"$dynamics\", $defaults}}"
  # SugarCRM: the first call logs in with the password grant and writes the tokens back.
  demo_connection demo-sugarcrm "{\"crmType\": \"sugarcrm\", \"credentials\": {\"username\": \"demo-sugar-user\",
  \"password\": \"demo-sugar-password\"}, \"settings\": {\"instanceUrl\": \"$sugarcrm\", $defaults}}"
}
