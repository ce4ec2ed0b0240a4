#!/usr/bin/env bash
# Installs the pinned n8n of tests/n8n/package.json into .cache/n8n (CRM_SYNC_N8N_DIR picks another
# folder), once: it reinstalls only when the pinned versions changed or no install finished yet.
# Needs Node.js 20. Run by tests/n8n/run.sh, and by scripts/test.sh while the Rust tests compile.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v node >/dev/null || { echo "n8n needs Node.js 20 (node is missing)" >&2; exit 1; }
n8n_dir="${CRM_SYNC_N8N_DIR:-$PWD/.cache/n8n}"
# A copy of package.json written after npm finished marks an install as complete.
if ! cmp -s tests/n8n/package.json "$n8n_dir/installed.json" || [ ! -x "$n8n_dir/node_modules/.bin/n8n" ]; then
  echo "installing n8n into $n8n_dir (once; a few minutes)"
  rm -rf "$n8n_dir/node_modules" "$n8n_dir/package-lock.json" "$n8n_dir/installed.json"
  mkdir -p "$n8n_dir"
  cp tests/n8n/package.json "$n8n_dir/package.json"
  (cd "$n8n_dir" && npm install --no-audit --no-fund --omit=dev --loglevel=error)
  cp tests/n8n/package.json "$n8n_dir/installed.json"
fi
