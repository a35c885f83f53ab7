#!/usr/bin/env bash
# Regenerates the loadgen section of BENCHMARKS.md at the repository root (between the
# `<!-- loadgen:begin -->` and `<!-- loadgen:end -->` markers; the rest of the file is kept):
# builds the server and the loadgen in release mode, runs each measurement against a fresh
# server on this machine, and writes the figures with the machine, the date and the exact
# commands.
#
#   bash loadgen/scripts/benchmarks.sh            # full run, about 10 minutes
#   QUICK=1 bash loadgen/scripts/benchmarks.sh    # small and short, to check the script
#   REPORT_ONLY=1 bash loadgen/scripts/benchmarks.sh  # rewrite the section from the last run's
#                                                     # JSON reports in $OUT, measuring nothing
#
# Needs: a Rust toolchain, python3 (to turn the JSON reports into tables), an otherwise idle
# machine (other load shows up in the figures), an open-files hard limit of at least 20,000.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$root/target/benchmarks}
mkdir -p "$out"

if [[ "${QUICK:-0}" == 1 ]]; then
    N=2000; IDLE=10s; PUSH_N=1000; PUSH_FOR=5s; SESSIONS=200000; STATE_FOR=10s
else
    N=19000; IDLE=60s; PUSH_N=10000; PUSH_FOR=20s; SESSIONS=10000000; STATE_FOR=60s
fi
PORT=${PORT:-7790}

if [[ "${REPORT_ONLY:-0}" != 1 ]]; then
# The machine's load when the run starts: other processes' work shows up in every figure.
cut -d' ' -f1-3 /proc/loadavg >"$out/loadavg"
cargo build --release -p tether-server -p tether-loadgen >&2
tether="$target/release/tether"
loadgen="$target/release/tether-loadgen"

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# start_server SHARDS: a fresh server on 127.0.0.1:$PORT with the embedded default config.
start_server() {
    stop_server
    "$tether" --listen "127.0.0.1:$PORT" --shards "$1" --drain-ms 500 --log warn \
        >"$out/server.stdout" 2>"$out/server.stderr" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$out/server.stdout" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the server did not start; see $out/server.stderr" >&2
    exit 1
}

# run NAME COMMAND...: runs a measurement, keeps its JSON report and its exact command.
run() {
    local name=$1
    shift
    echo "== $name: $*" >&2
    "$@" --json --quiet >"$out/$name.json"
    echo "$*" >"$out/$name.cmd"
}

S="--server 127.0.0.1:$PORT"

start_server 0
run idle "$loadgen" idle -n "$N" --rate 2000 --interval 10s --duration "$IDLE" $S --server-pid "$server_pid"
start_server 0
run connect "$loadgen" connect -n "$N" --rate 50000 $S --server-pid "$server_pid"
start_server 1
run push_1shard "$loadgen" push -n "$PUSH_N" --msg-rate 2000 --duration "$PUSH_FOR" $S --server-pid "$server_pid"
start_server 2
run push_2shards "$loadgen" push -n "$PUSH_N" --msg-rate 2000 --duration "$PUSH_FOR" $S --server-pid "$server_pid"
start_server 2
run push_light "$loadgen" push -n "$PUSH_N" --msg-rate 200 --duration "$PUSH_FOR" $S --server-pid "$server_pid"
stop_server
echo "== state: cargo bench -p tether-server --bench state -- --sessions $SESSIONS --duration $STATE_FOR" >&2
(cd "$root" && cargo bench -q -p tether-server --bench state -- --sessions "$SESSIONS" --duration "${STATE_FOR%s}" --json) >"$out/state.json"
echo "cargo bench -p tether-server --bench state -- --sessions $SESSIONS --duration ${STATE_FOR%s}" >"$out/state.cmd"
fi

python3 - "$out" "$root/BENCHMARKS.md" <<'PY'
import json, os, platform, subprocess, sys, datetime
out, dest = sys.argv[1], sys.argv[2]
def load(n):
    with open(os.path.join(out, n + ".json")) as f:
        return json.load(f)
def cmd(n):
    with open(os.path.join(out, n + ".cmd")) as f:
        c = f.read().strip().split()
    c[0] = os.path.basename(c[0])
    return " ".join("$(pgrep -x tether)" if i > 0 and c[i-1] == "--server-pid" else w for i, w in enumerate(c))
def ms(us): return f"{us/1000:.3f}"
def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
idle, conn, p1, p2, pl, st = (load(n) for n in ["idle", "connect", "push_1shard", "push_2shards", "push_light", "state"])
sv = idle["server"]
L = []
L.append("# Benchmarks\n")
L.append("Produced by `bash loadgen/scripts/benchmarks.sh` (rerun it to regenerate this section). Every figure "
         "comes from `tether-loadgen` against a fresh `tether` on the same machine over loopback, "
         "so the loadgen's own CPU use is part of the machine's load.\n")
stamp = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(out, "idle.json")), datetime.timezone.utc)
L.append(f"- date: {stamp.strftime('%Y-%m-%d %H:%M UTC')}")
L.append(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {mem_gib:.1f} GiB RAM, Linux {platform.release()}")
try:
    loadavg = open(os.path.join(out, "loadavg")).read().strip()
    L.append(f"- load average (1, 5, 15 min) when the run started: {loadavg}; on a busy machine "
             "the latencies' tails and the CPU figures include other processes' work")
except OSError:
    pass
L.append("- server: `tether --listen 127.0.0.1:PORT --shards N --drain-ms 500 --log warn`, otherwise its embedded "
         "default configuration; N = 0 (one shard per CPU) unless stated\n")
L.append(f"## Idle connections ({idle['online_after_ramp']} online)\n")
L.append(f"`{cmd('idle')}`\n")
L.append("| figure | value |\n|---|---|")
def opt(v, unit, fmt="{:.1f}"):
    return "n/a" if v is None else fmt.format(v) + " " + unit
L.append(f"| server user-space bytes per idle connection (RSS growth / connections) | {opt(sv['user_bytes_per_conn'], 'B')} |")
tcp = sv['kernel_tcp_bytes_per_conn']
res = sv['instruments']['tcp_mem_bytes']
tcp_text = opt(tcp, 'B') if tcp is not None else (f"< resolution ({res / 2**20:.0f} MiB / {idle['online_after_ramp']} conns = "
    f"{res / max(idle['online_after_ramp'], 1):.1f} B): sockstat counts in per-CPU batches of up to 1 MiB")
L.append(f"| kernel TCP buffer bytes per connection (sockstat `TCP: mem`, both ends) | {tcp_text} |")
L.append(f"| kernel slab bytes per connection (/proc/meminfo `Slab:` growth; both ends and the loadgen's epoll) | {opt(sv['kernel_slab_bytes_per_conn'], 'B')} |")
L.append(f"| server CPU per heartbeat (CPU during the idle phase / pongs) | {opt(sv['cpu_us_per_heartbeat'], 'µs', '{:.2f}')} |")
L.append(f"| server CPU during the idle phase (heartbeats included) | {sv['load_cpu_pct']:.2f} % of one core |")
r = idle["latency_us"].get("ping_rtt")
if r:
    L.append(f"| ping round trip p50 / p99 / p99.9 / max | {ms(r['p50'])} / {ms(r['p99'])} / {ms(r['p999'])} / {ms(r['max'])} ms |")
L.append(f"| errors | {sum(idle['errors'].values())} |")
L.append("")
L.append("## Connect rate\n")
L.append(f"`{cmd('connect')}`\n")
c, l = conn["latency_us"].get("connect"), conn["latency_us"].get("login")
L.append("| figure | value |\n|---|---|")
L.append(f"| logins per second over the ramp | {conn['connect_rate_per_s']:.0f} |")
if c and l:
    L.append(f"| connect p50 / p99 | {ms(c['p50'])} / {ms(c['p99'])} ms |")
    L.append(f"| login p50 / p99 | {ms(l['p50'])} / {ms(l['p99'])} ms |")
L.append(f"| errors | {sum(conn['errors'].values())} |")
L.append("")
L.append("## Push latency\n")
L.append("End to end: from the backend writing the push to the client reading it (a CLOCK_MONOTONIC "
         "stamp in the payload). With one shard every push is local; with two shards the backend's "
         "connection and the target user's home shard differ for about half of the pushes, which "
         "then take one mesh hop.\n")
L.append(f"- one shard: `{cmd('push_1shard')}` with `tether --shards 1`")
L.append(f"- two shards: `{cmd('push_2shards')}` with `tether --shards 2`\n")
L.append("| shards | pushes/s | e2e p50 | e2e p99 | e2e max | result p50 | result p99 | CPU per push | errors |\n|---|---|---|---|---|---|---|---|---|")
for name, p in [("1", p1), ("2", p2)]:
    e, res = p["latency_us"].get("push_e2e", {}), p["latency_us"].get("push_result", {})
    rate = p["throughput_per_s"].get("pushes_sent", 0)
    cpu = p["server"]["cpu_us_per_push"] if p.get("server") else None
    L.append(f"| {name} | {rate:.0f} | {ms(e.get('p50',0))} ms | {ms(e.get('p99',0))} ms | {ms(e.get('max',0))} ms | "
             f"{ms(res.get('p50',0))} ms | {ms(res.get('p99',0))} ms | {opt(cpu, 'µs', '{:.1f}')} | {sum(p['errors'].values())} |")
L.append("")
L.append("### Cross-shard hop\n")
L.append("Each client learns its shard from its LoginOk session id (the server puts the shard index in "
         "its top 16 bits) and the backend stamps its own shard into every payload, so each two-shard "
         "push is classified as same-shard or cross-shard (one mesh hop). The hop's cost is the "
         "difference between the two at the same percentile.\n")
L.append(f"- light load: `{cmd('push_light')}` with `tether --shards 2`\n")
L.append("| run | same-shard p50 / p99 | cross-shard p50 / p99 | hop at p50 / p99 |\n|---|---|---|---|")
for name, p in [("light load, 200 pushes/s", pl), ("2,000 pushes/s", p2)]:
    sm, cr = p["latency_us"].get("push_e2e_same_shard"), p["latency_us"].get("push_e2e_cross_shard")
    if sm and cr:
        L.append(f"| {name} | {sm['p50']} / {sm['p99']} µs | {cr['p50']} / {cr['p99']} µs | "
                 f"{cr['p50'] - sm['p50']} / {cr['p99'] - sm['p99']} µs |")
L.append("")
L.append(f"## {st['sessions']:,} sessions without sockets\n")
L.append(f"`{cmd('state')}`: one shard's real slab, timing wheel, user index and sessions, logins spread over "
         "one 30 s interval, then every session pinging every 30 s for the simulated time.\n")
L.append("| figure | value |\n|---|---|")
L.append(f"| bytes per session (RSS growth / sessions) | {st['rss_bytes_per_session']:.1f} B |")
L.append(f"| connection slab entry | {st['conn_struct_bytes']} B |")
L.append(f"| open + login | {st['login_ns']:.0f} ns |")
L.append(f"| heartbeat (decode, lease update, pong) | {st['heartbeat_ns']:.0f} ns |")
t = st["tick_us"]
L.append(f"| wheel tick p50 / p99 / max | {t['p50']} / {t['p99']} / {t['max']} µs |")
L.append(f"| sessions expired (expected 0) | {st['closed']} |")
L.append("")
# Only the part between the markers is this script's: other sections of the file (written by
# hand or by other benchmarks) are kept.
BEGIN, END = "<!-- loadgen:begin -->", "<!-- loadgen:end -->"
body = BEGIN + "\n" + "\n".join(L[1:]) + "\n" + END + "\n"
try:
    old = open(dest).read()
except FileNotFoundError:
    old = L[0] + "\n"
if BEGIN in old and END in old:
    new = old[:old.index(BEGIN)] + body + old[old.index(END) + len(END):].lstrip("\n")
else:
    new = old.rstrip("\n") + "\n\n" + body
with open(dest, "w") as f:
    f.write(new)
print("wrote", dest)
PY
