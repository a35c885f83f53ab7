#!/usr/bin/env bash
# What a flooding client does to the others on its shard: N bystanders heartbeat every second
# (tether-loadgen idle) for DURATION, three times, each against a fresh server:
#   alone      no flood;
#   flooded    FLOODERS logged-in clients (one per shard at least) write empty NetReports as
#              fast as the server reads them (loadgen/examples/flood.rs), default limits: the
#              per-connection frame rate (limits.client_frame_rate) closes each flooder;
#   unlimited  the same flood with limits.client_frame_rate = 0: only the fairness budget
#              (server.frame_budget frames per connection per batch) stands between the
#              flooders and the others, and the flood lasts the whole run;
#   elsewhere  the control: the same unlimited flood, but into a second server process on
#              another port, so the bystanders' server does no flood work at all and what is
#              left is what the flood costs the machine (its two cores are shared by both
#              servers, the flooder and the bystanders' client).
# Prints the bystanders' ping round trip (p50, p99, p99.9) and its ratio to the run alone, the
# server's ping-handling histogram, how the flooders ended, and per shard how often they were
# paused for the rest of a batch (fairness_paused).
#
#   bash tests/scripts/flood.sh [N] [DURATION_S] [FLOODERS] [netreport|ping]
#   (build first: cargo build --release && cargo build --release -p tether-loadgen --example flood)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-2000}; DURATION=${2:-30}; FLOODERS=${3:-2}; FRAME=${4:-netreport}
port=17970; mport=17971
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cat >"$dir/tether.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
shards = 2
metrics_listen = "127.0.0.1:$mport"
[api]
listen = ""
[log]
filter = "warn"
EOF

run() { # run NAME FLOOD(0|1|elsewhere) CLIENT_FRAME_RATE
  local name=$1 flood=$2 fport=$port
  TETHER_LIMITS__CLIENT_FRAME_RATE=$3 ./target/release/tether --config "$dir/tether.toml" \
    >"$dir/$name.out" 2>"$dir/$name.err" &
  local server=$!
  pids+=("$server")
  for _ in $(seq 200); do grep -qs "listening on" "$dir/$name.out" && break; sleep 0.05; done
  if [ "$flood" = elsewhere ]; then
    sed -e "s/:$port\"/:$((port + 2))\"/" -e "s/:$mport\"/:$((port + 3))\"/" "$dir/tether.toml" >"$dir/other.toml"
    TETHER_LIMITS__CLIENT_FRAME_RATE=$3 ./target/release/tether --config "$dir/other.toml" \
      >"$dir/other.out" 2>"$dir/other.err" &
    pids+=($!)
    for _ in $(seq 200); do grep -qs "listening on" "$dir/other.out" && break; sleep 0.05; done
    fport=$((port + 2))
  fi
  if [ "$flood" != 0 ]; then
    ./target/release/examples/flood "127.0.0.1:$fport" --connections "$FLOODERS" --shards 2 \
      --seconds $((DURATION + 20)) --frame "$FRAME" >"$dir/$name.flood" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ "$(grep -c 'on shard' "$dir/$name.flood")" -ge "$FLOODERS" ] && break; sleep 0.1; done
    sleep 1
  fi
  ./target/release/tether-loadgen idle -n "$N" --interval 1s --duration "${DURATION}s" \
    --server "127.0.0.1:$port" --json --quiet >"$dir/$name.json"
  curl -s "127.0.0.1:$mport/metrics" >"$dir/$name.metrics"
  kill "$server"; wait "$server" 2>/dev/null || true
}

run alone 0 1000
run flooded 1 1000
run unlimited 1 0
run elsewhere elsewhere 0
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
for name in flooded unlimited elsewhere; do
  echo "$name:"; { grep -v "on shard" "$dir/$name.flood" || echo "still flooding when the run ended"; } | sed "s/^/  /"
done
python3 - "$dir" "$N" "$FLOODERS" "$FRAME" <<'PY'
import json, re, sys
d, n, k, frame = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def rtt(name):
    r = json.load(open(f"{d}/{name}.json"))
    return r["latency_us"]["ping_rtt"], r.get("errors") or {}
def metric(name, pat):
    return sum(float(l.rsplit(" ", 1)[1]) for l in open(f"{d}/{name}.metrics")
               if l.startswith(pat) or re.match(pat, l))
def handling(name):
    text = open(f"{d}/{name}.metrics").read()
    count = metric(name, r"tether_ping_handling_seconds_count")
    out = []
    for le in ["0.00005", "0.00025", "0.001", "0.005", "0.025"]:
        got = metric(name, r'tether_ping_handling_seconds_bucket\{le="%s"' % le)
        out.append(f"<={float(le)*1e6:.0f}us {100*got/max(count,1):.1f}%")
    return ", ".join(out)
a, ea = rtt("alone")
print(f"{n} bystanders pinging every 1 s; flood: {k} connections writing {frame} frames")
for name in ("alone", "flooded", "unlimited", "elsewhere"):
    p, e = rtt(name)
    ratio = "" if name == "alone" else f"; p99 {p['p99'] / max(a['p99'], 1):.2f}x alone"
    print(f"  {name:9} ping RTT p50 {p['p50']} us, p99 {p['p99']} us, p99.9 {p['p999']} us, max {p['max']} us ({p['count']} pings){ratio}; errors: {e or 'none'}")
    print(f"  {'':9} server ping handling: {handling(name)}")
    if name in ("alone", "elsewhere"):
        continue
    for shard in ("0", "1"):
        g = lambda family: int(metric(name, family + '{shard="' + shard + '"'))
        paused, reports = g("tether_fairness_paused_total"), g("tether_net_reports_total")
        cut, nobuf = g("tether_close_frame_rate_total"), g("tether_recv_no_buffers_total")
        print(f"  {'':9} shard {shard}: flooders paused {paused} times; NetReports read {reports}; "
              f"closed for their frame rate {cut}; receives out of buffers {nobuf}")
PY
