#!/usr/bin/env bash
# Derives functions/hot-text.ld, the linker script that places the functions a cold start runs
# together at the start of `.text` (README, Cold starts). `make hot-text` builds the functions
# unstripped and calls this with their folder: `scripts/hot-text.sh RELEASE_DIR`.
#
# It runs `cold-start` (one cold start and a few warm invocations of every function it measures)
# with each function under valgrind's callgrind, twice: on the local stores and on moto (production
# configuration). Every function that ran, with any alias at its address, becomes one input-section
# pattern: those production configuration ran first, and those more cold starts ran before others.
# A pattern leaves out what differs between the x86_64 build profiled here and the arm64 deploy
# build: the hash of a legacy-mangled name (`17h<16 hex>E`) and the crate disambiguators of a
# v0-mangled one (`Cs<base62>_`). Code outside its function's section (the C runtime's `_start`)
# stays where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

release=${1:?usage: scripts/hot-text.sh RELEASE_DIR (make hot-text builds it)}
release=$(cd "$release" && pwd)
command -v valgrind >/dev/null || { echo "hot-text needs valgrind (apt-get install valgrind)" >&2; exit 1; }
ensure_tool moto_server 'moto[server]'

work=$(mktemp -d)
moto_pid=
cleanup() {
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# cold-start starts the functions it finds beside itself: a copy of it, the floor and the emulator,
# and one wrapper per function. A wrapper does not exec, so cold-start's kill stops the shell while
# valgrind runs on: the function exits when the Runtime API is gone, and callgrind writes its
# profile on that exit.
cp "$release/cold-start" "$work/"
ln -s "$release/lambda-floor" "$release/crm-emulator" "$work/"
functions=(platforms sync-customer sync-lead sync-appointment get-customer test-connection scheduled-sync)
for function in "${functions[@]}"; do
  cat >"$work/$function" <<EOF
#!/bin/sh
valgrind --quiet --tool=callgrind --demangle=no --compress-strings=no \\
  --callgrind-out-file="$work/profile.\$HOT_TEXT_CONFIGURATION.$function.%p" "$release/$function" "\$@" 2>/dev/null
EOF
  chmod +x "$work/$function"
done

profile() {
  "$work/cold-start" 1 3 >"$work/cold-start.log" 2>&1 || { cat "$work/cold-start.log"; exit 1; }
  grep -E '^\| ' "$work/cold-start.log"
  # The profile is of the paths cold-start measures: every answer must be the one it expects.
  if grep -E '^\| ' "$work/cold-start.log" | awk -F'|' '{print $(NF-1)}' | grep -qE '(^ |then )[45][0-9][0-9]|unavailable'; then
    echo "a function answered with an error: the profile would be of its error path" >&2
    exit 1
  fi
  # Each profile is written when its function exits.
  for _ in $(seq 600); do
    pgrep -f "callgrind-out-file=$work" >/dev/null || return 0
    sleep 0.1
  done
  echo "valgrind did not finish within 60 s" >&2
  exit 1
}

echo "profiling on the local stores"
unset CRM_SYNC_TEST_AWS_ENDPOINT
export HOT_TEXT_CONFIGURATION=local
profile
start_moto "$work/moto.log"
echo "profiling in production configuration"
export HOT_TEXT_CONFIGURATION=aws
profile

python3 - "$release/sync-customer" functions/hot-text.ld "$work"/profile.* <<'EOF'
import os, re, subprocess, sys
from collections import defaultdict

binary, out, *profiles = sys.argv[1:]
# Every function symbol of the binary, and the names that share an address (aliases: the linker
# names a section after one of them).
names_at = defaultdict(set)
address_of = {}
for line in subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.split()
    if len(fields) == 3 and fields[1] in "tTwW":
        address = int(fields[0], 16)
        names_at[address].add(fields[2])
        address_of[fields[2]] = address
# How many of the profiles (a function's cold start in one configuration) ran each function, and
# whether one in production configuration did.
ran_in = defaultdict(int)
in_production = set()
for path in profiles:
    ran = set()
    with open(path, errors="replace") as profile:
        for line in profile:
            if line.startswith(("fn=", "cfn=")):
                name = line.split("=", 1)[1].strip()
                if name in address_of:
                    ran |= names_at[address_of[name]]
    for name in ran:
        ran_in[name] += 1
    if os.path.basename(path).startswith("profile.aws."):
        in_production |= ran

def pattern(name):
    legacy = re.fullmatch(r"(_ZN.*17h)[0-9a-f]{16}E", name)
    if legacy:
        return legacy.group(1) + "*"
    if name.startswith("_R"):
        return re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name)
    return name

# What production configuration runs first, the local stores' own code after it; within each,
# what more cold starts run first, so that a function's cold start maps one stretch of what they
# share and less of what only the others run. Within a count, by name (which keeps a module's
# functions together).
runs = defaultdict(int)
production = set()
for name, count in ran_in.items():
    p = pattern(name)
    runs[p] = max(runs[p], count)
    if name in in_production:
        production.add(p)
patterns = sorted(runs, key=lambda p: (p not in production, -runs[p], p))
with open(out, "w") as script:
    script.write(
        "/* The functions a cold start runs, placed together at the start of .text: the pages a cold\n"
        "   start maps are then mostly these (README, Cold starts). Generated by `make hot-text`\n"
        "   (scripts/hot-text.sh) from cold-start's cases under callgrind; do not edit. */\n"
        "SECTIONS {\n  .text.hot : {\n"
    )
    for p in patterns:
        script.write(f"    *(.text.{p} .text.unlikely.{p})\n")
    script.write("  }\n}\nINSERT BEFORE .text;\n")
print(f"{len(ran_in)} functions ran in {len(profiles)} cold starts; {len(patterns)} patterns in {out}")
EOF
# A changed script is not an input cargo tracks: the functions' next build must link again.
touch functions/*/src/main.rs
