#!/usr/bin/env bash
# Soak with churn: a server holds N connections (default 15,000) pinging every 10 s while
# connections close and reconnect at RATE per second (default 200) for DURATION (default 600s).
# Prints the server's RSS once ramped and at the end of the churn (same number of connections
# online), and its open descriptors before the clients came and after they all left.
#
#   bash tests/scripts/soak.sh [N] [RATE] [DURATION]      (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-15000}; RATE=${2:-200}; DURATION=${3:-600s}
port=17980
./target/release/tether --listen "127.0.0.1:$port" --api-listen '' --log warn &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 100); do ss -Hltn "( sport = :$port )" | grep -q . && break; sleep 0.1; done
fds() { ls "/proc/$pid/fd" | wc -l; }
fd_before=$(fds)
./target/release/tether-loadgen churn -n "$N" --rate 2000 --interval 10s --churn-rate "$RATE" \
    --duration "$DURATION" --server "127.0.0.1:$port" --server-pid "$pid" --json --quiet \
    >target/soak.json
sleep 3
fd_after=$(fds)
python3 - "$fd_before" "$fd_after" <<'PY'
import json, sys
r = json.load(open("target/soak.json"))
s = {x["label"]: x for x in r["server"]["samples"]}
ramped, end = s["ramped"]["rss_bytes"], s["load end"]["rss_bytes"]
print(f"connections {r['connections']}, churned {r['totals'].get('churned', r['totals'])}")
print(f"RSS ramped {ramped/2**20:.1f} MiB, end of churn {end/2**20:.1f} MiB: {100*(end-ramped)/ramped:+.1f} %")
print(f"descriptors before {sys.argv[1]}, after every client left {sys.argv[2]}")
print("errors", r["errors"])
PY
