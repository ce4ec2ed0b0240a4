#!/usr/bin/env bash
# Derives functions/hot-text.tsv, the functions each function's cold start runs, from which
# functions/hot-text.rs (the functions' build script) writes the linker script that places them
# together at the start of `.text` (README, Cold starts). `make hot-text` builds the functions
# unstripped and calls this with their folder: `scripts/hot-text.sh RELEASE_DIR`.
#
# It runs `cold-start` (one cold start and a few warm invocations of every function it measures)
# with each function under valgrind's callgrind, twice: on the local stores and on moto (production
# configuration). Every function that ran, with any alias at its address, becomes one input-section
# pattern, flagged per function by the configuration that ran it. A pattern leaves out what differs
# between the x86_64 build profiled here and the arm64 deploy build: the hash of a legacy-mangled
# name (`17h<16 hex>E`) and the crate disambiguators of a v0-mangled one (`Cs<base62>_`). Code
# outside its function's section (the C runtime's `_start`) stays where it is.
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

python3 - "$release" functions/hot-text.tsv "$work"/profile.* <<'EOF'
import os, re, subprocess, sys
from collections import defaultdict

release, out, *profiles = sys.argv[1:]

def symbols(binary):
    """A binary's function symbols, each with every name at its address (aliases: the linker
    names a section after one of them)."""
    names_at = defaultdict(set)
    address_of = {}
    listing = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTwW":
            address = int(fields[0], 16)
            names_at[address].add(fields[2])
            address_of[fields[2]] = address
    return {name: names_at[address] for name, address in address_of.items()}

def pattern(name):
    legacy = re.fullmatch(r"(_ZN.*17h)[0-9a-f]{16}E", name)
    if legacy:
        return legacy.group(1) + "*"
    if name.startswith("_R"):
        return re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name)
    return name

# Per function and configuration, the patterns of the functions its cold start ran; over all of
# them, how many cold starts ran each pattern, and whether one in production configuration did.
aliases_of = {}
ran_by = defaultdict(lambda: defaultdict(set))  # function -> configuration -> patterns
runs = defaultdict(int)
production = set()
for path in profiles:
    _, configuration, function, _ = os.path.basename(path).split(".", 3)
    if function not in aliases_of:
        aliases_of[function] = symbols(os.path.join(release, function))
    aliases = aliases_of[function]
    ran = set()
    with open(path, errors="replace") as profile:
        for line in profile:
            if line.startswith(("fn=", "cfn=")):
                name = line.split("=", 1)[1].strip()
                ran |= {pattern(alias) for alias in aliases.get(name, ())}
    ran_by[function][configuration] |= ran
    for p in ran:
        runs[p] += 1
    if configuration == "aws":
        production |= ran

functions = sorted(ran_by)
# The order for a function that was not profiled: what production configuration runs first, the
# local stores' own code after it; within each, what more cold starts run first, so that a cold
# start maps one stretch of what the functions share. Within a count, by name (which keeps a
# module's functions together). A profiled function takes what it ran in production
# configuration, then what it ran on the local stores, each in this order.
patterns = sorted(runs, key=lambda p: (p not in production, -runs[p], p))

def flag(function, p):
    if p in ran_by[function]["aws"]:
        return "p"
    return "l" if p in ran_by[function]["local"] else "-"

with open(out, "w") as table:
    table.write(
        "# The functions each function's cold start runs, for the order of its .text: read by\n"
        "# functions/hot-text.rs when a function is linked for Lambda (README, Cold starts).\n"
        "# Generated by `make hot-text` (scripts/hot-text.sh) from cold-start's cases under\n"
        "# callgrind; do not edit. A line is a section-name pattern and a flag per function below:\n"
        "# p ran in production configuration, l on the local stores only, - not at all.\n"
    )
    table.write("# functions\t" + "\t".join(functions) + "\n")
    for p in patterns:
        table.write(p + "\t" + "".join(flag(f, p) for f in functions) + "\n")
print(f"{len(patterns)} patterns from {len(profiles)} cold starts of {len(functions)} functions in {out}")
EOF
