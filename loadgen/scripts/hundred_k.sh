#!/usr/bin/env bash
# 100,000 logged-in, heartbeating connections in ONE tether process, on a box whose open-files
# hard limit (20,000 here) is far below that: the connections live in the shards' io_uring
# file tables (direct descriptors), each capped by the limit on its own, so the server runs
# more shards than the box has cores (7 by default: 7 x 20,000 slots).
#
#   bash loadgen/scripts/hundred_k.sh                 # 100,000 connections, about 2 minutes
#   N=20000 SHARDS=2 bash loadgen/scripts/hundred_k.sh   # smaller, to check the script
#
# It builds the server and the loadgen (NO_BUILD=1 skips that), starts the server, runs one
# `tether-loadgen idle` (its worker processes hold at most --per-worker sockets each), reads
# the server's /metrics and /proc once the connections are up and again near the end of the
# hold, prints the figures (also in $OUT/summary.md) and stops everything itself, also on
# error or Ctrl-C. The figures:
#   - memory per connection: the server's RSS growth over the ramp / connections (user
#     space), and the kernel's Slab growth / connections (both ends of each loopback
#     connection and the loadgen's epoll, so about twice a server socket), with the slab
#     caches that grew most (/proc/slabinfo, objects in use x object size; needs root);
#   - CPU per heartbeat: the server's CPU time over the window / heartbeats in it;
#   - the wheel's tick: tether_tick_seconds over the window (mean, and the histogram bucket
#     that holds the 50th, 99th and 100th percentile: upper bounds).
# Needs curl and python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$root/target/hundred_k}
N=${N:-100000}
SHARDS=${SHARDS:-7}
RATE=${RATE:-5000}
INTERVAL=${INTERVAL:-20s}
HOLD=${HOLD:-60}
PER_WORKER=${PER_WORKER:-15000}
PORT=${PORT:-7810}
API=$((PORT + 1))
mkdir -p "$out"
rm -f "$out"/*.prom "$out"/*.slab "$out"/report.json "$out"/summary.md

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p tether-server -p tether-loadgen >&2
fi
tether="$target/release/tether"
loadgen="$target/release/tether-loadgen"

server_pid=""
loadgen_pid=""
stop_all() {
    if [[ -n "$loadgen_pid" ]]; then
        kill -TERM "$loadgen_pid" 2>/dev/null || true
        wait "$loadgen_pid" 2>/dev/null || true
        loadgen_pid=""
    fi
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_all EXIT INT TERM

date -u '+%Y-%m-%d %H:%M UTC' >"$out/date"
cut -d' ' -f1-3 /proc/loadavg >"$out/loadavg.start"
server_cmd=("$tether" --listen "127.0.0.1:$PORT" --api-listen "127.0.0.1:$API" --shards "$SHARDS"
    --drain-ms 500 --log warn)
"${server_cmd[@]}" >"$out/server.stdout" 2>"$out/server.stderr" &
server_pid=$!
for _ in $(seq 100); do
    grep -q "^listening on" "$out/server.stdout" 2>/dev/null && break
    sleep 0.1
done
grep -q "^listening on" "$out/server.stdout" || {
    echo "the server did not start; see $out/server.stderr" >&2
    exit 1
}

# snapshot NAME: the server's metrics, CPU ticks, RSS, the box's Slab and TCP sockstat.
snapshot() {
    curl -sf "http://127.0.0.1:$API/metrics" >"$out/$1.prom"
    {
        echo "# cpu_ticks $(awk '{print $14 + $15}' "/proc/$server_pid/stat")"
        echo "# rss_kb $(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")"
        echo "# slab_kb $(awk '/^Slab:/ {print $2}' /proc/meminfo)"
        echo "# tcp_mem_pages $(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)"
        echo "# fds $(ls "/proc/$server_pid/fd" | wc -l)"
        echo "# at $(date +%s.%N)"
    } >>"$out/$1.prom"
    cat /proc/slabinfo >"$out/$1.slab" 2>/dev/null || true
}
connections() {
    curl -sf "http://127.0.0.1:$API/metrics" |
        awk '/^tether_connections\{/ {s += $2} END {print s + 0}'
}

snapshot before
loadgen_cmd=("$loadgen" idle -n "$N" --rate "$RATE" --interval "$INTERVAL" --duration "${HOLD}s"
    --per-worker "$PER_WORKER" --server "127.0.0.1:$PORT" --server-pid "$server_pid" --json --quiet)
echo "== ${server_cmd[*]}" >&2
echo "== ${loadgen_cmd[*]}" >&2
"${loadgen_cmd[@]}" >"$out/report.json" 2>"$out/loadgen.stderr" &
loadgen_pid=$!

# The ramp: until every connection is up (or the loadgen gave up), at most ramp time + 60 s.
deadline=$((SECONDS + N / RATE + 60))
while (($(connections) < N)) && ((SECONDS < deadline)) && kill -0 "$loadgen_pid" 2>/dev/null; do
    sleep 1
done
sleep 3
snapshot ramped
# The window: most of the hold, ending before the loadgen closes its connections.
window=$((HOLD - 10))
((window > 5)) || window=5
sleep "$window"
snapshot held

wait "$loadgen_pid" || echo "the loadgen failed; see $out/loadgen.stderr" >&2
loadgen_pid=""
snapshot after
cut -d' ' -f1-3 /proc/loadavg >"$out/loadavg.end"
stop_all

python3 - "$out" "$N" "$SHARDS" "${server_cmd[*]}" "${loadgen_cmd[*]}" <<'EOF' | tee "$out/summary.md"
import json, re, sys
out, n, shards, server_cmd, loadgen_cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
hz = 100

def read(name):
    samples, facts = [], {}
    for line in open(f"{out}/{name}.prom"):
        if line.startswith("# ") and len(line.split()) == 3 and not line.startswith(("# HELP", "# TYPE")):
            _, k, v = line.split()
            facts[k] = float(v)
            continue
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r'([a-z_]+)(\{([^}]*)\})? (\S+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            samples.append((m.group(1), labels, float(m.group(4))))
    return samples, facts

def total(samples, name, **want):
    return sum(v for k, l, v in samples if k == name and all(l.get(a) == b for a, b in want.items()))

b, bf = read("before")
r, rf = read("ramped")
h, hf = read("held")
report = json.load(open(f"{out}/report.json"))
srv = report.get("server") or {}
online = total(r, "tether_connections")
secs = hf["at"] - rf["at"]
beats = total(h, "tether_heartbeats_total") - total(r, "tether_heartbeats_total")
cpu_us = (hf["cpu_ticks"] - rf["cpu_ticks"]) * 1e6 / hz
ticks = total(h, "tether_tick_seconds_count") - total(r, "tether_tick_seconds_count")
tick_sum = total(h, "tether_tick_seconds_sum") - total(r, "tether_tick_seconds_sum")
bounds = sorted({l["le"] for k, l, v in h if k == "tether_tick_seconds_bucket"},
                key=lambda x: float("inf") if x == "+Inf" else float(x))
cum = [(le, total(h, "tether_tick_seconds_bucket", le=le) - total(r, "tether_tick_seconds_bucket", le=le)) for le in bounds]
def bucket(q):
    for le, c in cum:
        if ticks and c >= q * ticks:
            return "> 1 s" if le == "+Inf" else f"<= {float(le) * 1e6:,.0f} µs"
    return "n/a"
per_shard = sorted(int(total(r, "tether_ring_files", shard=str(i))) for i in range(shards))
capacity = int(total(r, "tether_ring_files_capacity"))
def date():
    return open(f"{out}/date").read().strip()
def load(which):
    return open(f"{out}/loadavg.{which}").read().strip()
def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"
import os
mem_gib = int(open("/proc/meminfo").readline().split()[1]) / 2**20
user_b = srv.get("user_bytes_per_conn")
slab_b = (rf["slab_kb"] - bf["slab_kb"]) * 1024 / max(online, 1)
errors = report.get("errors") or {}
def slabs(name):
    caches = {}
    try:
        for line in open(f"{out}/{name}.slab"):
            f = line.split()
            if len(f) > 3 and f[1].isdigit():
                caches[f[0]] = int(f[1]) * int(f[3])
    except OSError:
        pass
    return caches
sb, sr = slabs("before"), slabs("ramped")
grown = sorted(((sr[k] - sb.get(k, 0), k) for k in sr), reverse=True)[:8]
print(f"- date: {date()}")
print(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {mem_gib:.1f} GiB RAM, Linux {os.uname().release}, open-files hard limit {os.popen('ulimit -Hn').read().strip()}")
print(f"- load average (1, 5, 15 min) at the start: {load('start')}; at the end: {load('end')}")
print(f"- server: `{server_cmd}`")
print(f"- loadgen: `{loadgen_cmd}`")
print()
print("| figure | value |")
print("|---|---|")
print(f"| connections online after the ramp (asked {n:,}) | {int(online):,} (loadgen: {report.get('online_after_ramp', 0):,} after the ramp, {report.get('online_after_load', 0):,} at the end) |")
print(f"| loadgen | {report.get('workers')} worker processes, ramp {report.get('ramp_s', 0):.1f} s ({report.get('connect_rate_per_s', 0):,.0f} logins/s) |")
print(f"| direct descriptors in use per shard (ring file tables) | {', '.join(f'{x:,}' for x in per_shard)} of {capacity // shards:,} each |")
print(f"| descriptors in the server process's own table | {int(bf['fds'])} before, {int(rf['fds'])} with the connections (tether_process_open_fds {int(total(r, 'tether_process_open_fds'))}) |")
print(f"| server RSS | {bf['rss_kb'] / 1024:.1f} MiB before, {rf['rss_kb'] / 1024:.1f} MiB with the connections |")
print(f"| user-space bytes per connection (RSS growth over the ramp / connections, loadgen) | {user_b:.0f} B |" if user_b else "| user-space bytes per connection | n/a |")
print(f"| kernel slab bytes per connection (/proc/meminfo Slab growth / connections: both ends of each loopback connection and the loadgen's epoll) | {slab_b:,.0f} B |")
if sr:
    print("| slab caches that grew most, bytes per connection (objects in use x size; both ends) | " + ", ".join(f"`{k}` {g / max(online, 1):,.0f}" for g, k in grown if g > 0) + " |")
print(f"| kernel TCP buffer pages (sockstat `TCP: mem`), before / with the connections | {int(bf['tcp_mem_pages'])} / {int(rf['tcp_mem_pages'])} |")
print(f"| window measured | {secs:.1f} s, {int(beats):,} heartbeats ({beats / secs:,.0f}/s) |")
print(f"| server CPU in the window | {cpu_us / 1e6:.2f} s ({cpu_us / 1e4 / secs:.1f} % of one core) |")
print(f"| server CPU per heartbeat (window CPU / heartbeats; loadgen's own figure) | {cpu_us / max(beats, 1):.2f} µs ({(srv.get('cpu_us_per_heartbeat') or 0):.2f} µs) |")
print(f"| wheel ticks in the window (all shards) | {int(ticks):,} |")
print(f"| tick work, mean | {tick_sum / max(ticks, 1) * 1e6:,.1f} µs |")
print(f"| tick work, p50 / p99 / max (histogram bucket) | {bucket(0.5)} / {bucket(0.99)} / {bucket(1.0)} |")
print(f"| ping round trip p50 / p99 (loadgen) | {report['latency_us'].get('ping_rtt', {}).get('p50', 0) / 1000:.3f} / {report['latency_us'].get('ping_rtt', {}).get('p99', 0) / 1000:.3f} ms |" if 'ping_rtt' in report.get('latency_us', {}) else "| ping round trip | n/a |")
print(f"| refused (ring table full / out of process descriptors) | {int(total(h, 'tether_refused_ring_table_total'))} / {int(total(h, 'tether_refused_descriptors_total'))} |")
print(f"| errors (loadgen) | {sum(errors.values()) if errors else 0}{' ' + json.dumps(errors) if errors else ''} |")
EOF
