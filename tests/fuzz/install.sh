#!/usr/bin/env bash
# Installs the pinned Schemathesis from PyPI into the user's Python if it is missing or another
# version is installed. Run by tests/fuzz/run.sh, and by scripts/test.sh while the Rust tests compile.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.sh

schemathesis_version=4.32.5
# ensure_tool installs only a missing command; another installed version is replaced first.
if command -v schemathesis >/dev/null 2>&1 &&
  [ "$(schemathesis --version)" != "schemathesis, version $schemathesis_version" ]; then
  echo "installing schemathesis==$schemathesis_version (found $(schemathesis --version))"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
ensure_tool schemathesis "schemathesis==$schemathesis_version"
