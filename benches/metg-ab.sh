#!/usr/bin/env bash
# Interleaved Task Bench METG sweeps across worker processes, for comparing builds on a noisy
# machine: one sweep per binary per round, in turn, then each binary's median.
#
#   benches/metg-ab.sh ROUNDS BINARY [BINARY...]
#
# Each BINARY is a dagger-bench executable (copy `target/release/dagger-bench` aside after
# each build). Extra sweep flags can be given in METG_FLAGS (default: the issue 3 protocol,
# `-runs 3 -pin-threads`). Every sweep's result is appended to metg-ab.log in the current
# directory as "BINARY METG_US".
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 ROUNDS BINARY [BINARY...]" >&2
    exit 2
fi
rounds=$1
shift
for bin in "$@"; do
    if [ ! -x "$bin" ]; then
        echo "$0: $bin is not an executable" >&2
        exit 2
    fi
done
flags=${METG_FLAGS:--runs 3 -pin-threads}
log=metg-ab.log
results=$(mktemp)
trap 'rm -f "$results"' EXIT

for ((round = 1; round <= rounds; round++)); do
    for bin in "$@"; do
        # shellcheck disable=SC2086 # the flags are words on purpose
        line=$("$bin" taskbench metg -type stencil_1d -width 4 -steps 1000 \
            -kernel compute_bound -metg-start 262144 --workers 2 --worker-threads 1 \
            $flags 2>/dev/null | grep -o '"metg_interp_us":[0-9.e+-]*' || true)
        us=${line#*:}
        if [ -z "$us" ]; then
            echo "round $round: $bin gave no METG (the sweep never fell below 50 %?)" >&2
            continue
        fi
        us=$(awk -v v="$us" 'BEGIN { printf "%.1f", v }')
        echo "round $round: $bin $us µs"
        echo "$bin $us" | tee -a "$log" >>"$results"
    done
done

for bin in "$@"; do
    awk -v b="$bin" '$1 == b { print $2 }' "$results" | sort -g | awk -v b="$bin" '
        { v[NR] = $1; if ($1 < 50) under++ }
        END {
            if (NR == 0) { print b ": no sweep"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s: median %.1f µs over %d sweeps (%.1f-%.1f), %d under 50 µs\n",
                b, m, NR, v[1], v[NR], under
        }'
done
