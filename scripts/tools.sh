# Installs the Python-packaged tools the project needs, once, into the user's Python.
# Sourced by dev.sh and test.sh; `ensure_tool COMMAND PIP_SPEC`.
ensure_tool() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (provides $1)"
    python3 -m pip install --quiet --disable-pip-version-check "$2"
    hash -r
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "$1 is still missing after installing $2" >&2; exit 1; }
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
