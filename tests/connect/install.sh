#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (and a font for the page) if they are missing. The
# downloaded packages are kept in ~/.cache/crm-sync/apt (CRM_SYNC_APT_CACHE picks another folder),
# outside the clone and apart from apt's own cache, which may be emptied after every install, so a
# reinstall on this machine downloads nothing. Run by tests/connect/run.sh, and by scripts/test.sh
# while the Rust tests compile.
set -euo pipefail

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver from Debian's packages (once)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  cache="${CRM_SYNC_APT_CACHE:-$HOME/.cache/crm-sync/apt}"
  mkdir -p "$cache/partial"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -o Dir::Cache::Archives="$cache" -o APT::Keep-Downloaded-Packages=true \
    chromium chromium-driver fonts-liberation >/dev/null
fi
command -v chromedriver >/dev/null || { echo "chromedriver is still missing" >&2; exit 1; }
