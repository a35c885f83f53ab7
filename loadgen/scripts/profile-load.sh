#!/bin/bash
# Records where a server's CPU goes during a loadgen's load phase, for `tether-loadgen
# --during-load`, which runs it with SERVER_PID set and sends SIGINT when the phase ends:
#
#   tether-loadgen idle ... --server-pid PID \
#       --during-load 'bash loadgen/scripts/profile-load.sh OUT [METRICS_URL]'
#
# Writes OUT.perf (perf record -g of the server's threads, 999 samples a second) and, with a
# tether metrics URL (http://127.0.0.1:7780/metrics by default configuration), OUT.ring-start
# and OUT.ring-end: its tether_ring_*_total and tether_heartbeats_total lines at the phase's
# start and end, so waits and completions per heartbeat come from the same window.
# `python3 loadgen/scripts/cpu_split.py OUT.perf` then splits the samples by kind of work.
set -u
out=${1:?usage: profile-load.sh OUT [METRICS_URL]}
url=${2:-}
: "${SERVER_PID:?profile-load.sh runs under tether-loadgen --during-load with --server-pid}"
command -v perf >/dev/null || { echo "profile-load.sh: perf is not installed" >&2; exit 2; }

ring() { # FILE
    [[ -n "$url" ]] || return 0
    curl -sf --max-time 5 "$url" | grep -E '^tether_(ring_[a-z_]+_total|heartbeats_total)\{' >"$1" \
        || echo "profile-load.sh: no tether ring counters at $url" >&2
}

ring "$out.ring-start"
perf record -F 999 -g -p "$SERVER_PID" -o "$out.perf" --quiet &
perf_pid=$!
# The loadgen's SIGINT reaches perf too (it signals the whole group); pass it on in case perf
# ignored it as a background job, then let perf write its file and read the counters again.
trap 'kill -INT "$perf_pid" 2>/dev/null' INT TERM
wait "$perf_pid"
status=$?
if kill -0 "$perf_pid" 2>/dev/null; then
    # The trap cut the first wait short.
    wait "$perf_pid"
    status=$?
fi
ring "$out.ring-end"
exit "$status"
