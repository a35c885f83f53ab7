#!/usr/bin/env bash
# A restart under N reconnecting clients (default 19,000) with the login rate held.
#
# Server A holds N clients (tether-loadgen idle --reconnect). Server B starts on the same port
# with --takeover. Then A is stopped:
#   MODE=term  SIGTERM: A sends every client a GoAway with a WINDOW_MS reconnect window and
#              closes its listeners; the clients come back to B spread over the window.
#   MODE=kill  SIGKILL: every client loses its connection at once and comes back after its own
#              0.5 s back-off: a reconnect storm that only B's login rate spreads out.
# B's login rate is LOGIN_RATE per second (burst: one second's worth; A has the default). The script samples B's
# /metrics every 250 ms and prints: how long until all N were logged in on B, the highest
# logins per second B accepted, how many logins it refused with a back-off, what the clients
# lost and how long each took to get back (loss to login), and how A ended.
#
#   bash tests/scripts/restart.sh [term|kill] [N] [LOGIN_RATE] [WINDOW_MS]
#   (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-term}; N=${2:-19000}; LOGIN_RATE=${3:-2000}; WINDOW_MS=${4:-10000}
case "$MODE" in term | kill) ;; *) echo "MODE is term or kill" >&2; exit 2 ;; esac
port=17990
dir=$(mktemp -d)
common="[server]
listen = \"127.0.0.1:$port\"
shards = 2
drain_ms = $WINDOW_MS
[api]
listen = \"\"
[log]
filter = \"warn\""
# A takes the first logins at its default rate; B, the restarted server, holds LOGIN_RATE.
printf '%s\n' "$common" >"$dir/a.toml"
printf '%s\n[limits]\nlogin_rate = %s\nlogin_burst = %s\n' "$common" "$LOGIN_RATE" "$LOGIN_RATE" >"$dir/b.toml"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT

start() { # start NAME METRICS_PORT [extra args]: starts a server, waits for its listeners
  local name=$1 mport=$2; shift 2
  TETHER_SERVER__METRICS_LISTEN="127.0.0.1:$mport" ./target/release/tether \
    --config "$dir/$name.toml" "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
  pids+=($!)
  for _ in $(seq 200); do grep -qs "listening on" "$dir/$name.out" && return; sleep 0.05; done
  echo "server $name did not start:" >&2; cat "$dir/$name.err" >&2; exit 1
}
clients() { # clients METRICS_PORT: client connections the server holds
  curl -s "127.0.0.1:$1/metrics" |
    awk '/^tether_connections_by_state\{.*state="client"/ {s += $2} END {print s + 0}'
}

start a 17991
a=${pids[0]}
./target/release/tether-loadgen idle -n "$N" --rate 5000 --interval 60s --duration 60s \
  --reconnect --server "127.0.0.1:$port" --json --quiet >"$dir/loadgen.json" &
lg=$!
pids+=($lg)
for _ in $(seq 600); do [ "$(clients 17991)" -ge "$N" ] && break; sleep 0.1; done
echo "A holds $(clients 17991) clients"

start b 17992 --takeover
t0=$(date +%s.%N)
if [ "$MODE" = term ]; then kill -TERM "$a"; else kill -KILL "$a"; fi
python3 - "$N" 17992 "$t0" "$dir/samples.txt" "$a" <<'PY'
import re, sys, time, urllib.request
n, mport, t0, out, a = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
def a_alive():
    try:
        return open(f"/proc/{a}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
a_gone = None
def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    def total(pat):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if re.match(pat, l))
    return (total(r'tether_connections_by_state\{.*state="client"'),
            total(r'tether_logins_total\{.*kind="client"'),
            total(r'tether_refused_login_rate_total'))
rows = []
deadline = t0 + 180
while time.time() < deadline:
    t = time.time() - t0
    rows.append((t,) + scrape())
    if a_gone is None and not a_alive():
        a_gone = t
    if rows[-1][1] >= n and a_gone is not None:
        break
    time.sleep(0.25)
with open(out + ".a", "w") as f:
    f.write("%.1f" % a_gone if a_gone is not None else "still running")
with open(out, "w") as f:
    for r in rows:
        f.write("%.2f %d %d %d\n" % r)
PY
wait "$a" 2>/dev/null && a_rc=0 || a_rc=$?
a_took=$(cat "$dir/samples.txt.a")
echo "waiting for the clients' report (the load phase lasts 60 s)"
wait "$lg" || echo "tether-loadgen exited with $?"
python3 - "$N" "$MODE" "$LOGIN_RATE" "$WINDOW_MS" "$dir/samples.txt" "$dir/loadgen.json" "$a_rc" "$a_took" <<'PY'
import json, sys
n, mode, rate, window = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [tuple(map(float, l.split())) for l in open(sys.argv[5])]
t_all = next((r[0] for r in rows if r[1] >= n), None)
# Logins per second: the largest increase over any window of about one second.
peak = 0.0
for i, r in enumerate(rows):
    for j in range(i + 1, len(rows)):
        if rows[j][0] - r[0] >= 0.95:
            peak = max(peak, (rows[j][2] - r[2]) / (rows[j][0] - r[0]))
            break
print(f"mode {mode}: {n} clients, B's login rate {rate}/s, drain window {window} ms")
if t_all is None:
    print(f"NOT all back: {int(rows[-1][1])} of {n} on B after {rows[-1][0]:.1f} s")
else:
    print(f"all {n} logged in on B {t_all:.1f} s after the signal")
print(f"B: highest logins per second over 1 s: {peak:.0f}; logins refused with a back-off: {int(rows[-1][3])}")
print(f"A: exit status {sys.argv[7]}, gone {sys.argv[8]} s after the signal (sampled every 0.25 s)")
try:
    r = json.load(open(sys.argv[6]))
except Exception as e:
    print(f"loadgen report unreadable: {e}")
    sys.exit(0)
print("clients' errors:", r.get("errors") or "none")
print("clients' events:", {k: v for k, v in (r.get("events") or {}).items()})
rc = (r.get("latency_us") or {}).get("reconnect")
if rc:
    print(f"reconnect (loss to login): p50 {rc['p50']/1e6:.2f} s, p99 {rc['p99']/1e6:.2f} s, max {rc['max']/1e6:.2f} s, {rc['count']} reconnects")
PY
