#!/usr/bin/env bash
# Clients that die without a word: how fast the server frees what they held.
#
#   sigkill    N clients on loopback, then every client process is SIGKILLed: their kernel
#              closes the sockets, so the server should free them at once.
#   blackhole  N clients in a network namespace of their own, behind a veth link to the
#              server's namespace (198.18.0.0/15), heartbeating with a lease of LEASE_S; then
#              the clients' link goes down: nothing more arrives, no FIN, no RST (a phone that
#              left the network), one lease after they all logged in, so their last Pings
#              are spread over the lease before the cut. The server must free each connection
#              at its idle deadline, lease x 1.5 + 10 s (session.lease_multiplier_pct,
#              grace_ms) after its last frame: between LEASE_S x 0.5 + 10 s and
#              LEASE_S x 1.5 + 10 s after the cut (plus the timing wheel's tick).
# For each it prints how long until the server held no client connection, the closes by
# reason, and the server's descriptors and RSS before the clients came and after they went.
# Needs root and iproute2 (blackhole); every namespace it makes is deleted on exit.
#
#   bash tests/scripts/dead_clients.sh [sigkill|blackhole|both] [N] [LEASE_S]
#   (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
WHAT=${1:-both}; N=${2:-19000}; LEASE_S=${3:-20}
dir=$(mktemp -d)
# The server refuses the development secret on a non-loopback address.
SECRET="dead-clients-script-secret-$RANDOM$RANDOM"
ns_s=tether-dc-s; ns_c=tether-dc-c
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns_s" 2>/dev/null || true
  ip netns del "$ns_c" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# run_case NAME NETNS LISTEN CLIENT_NETNS SERVER_ADDR CUT_COMMAND BOUND_S HOLD_S
run_case() {
  local name=$1 ns=$2 listen=$3 cns=$4 target=$5 cut=$6 bound=$7 hold=$8
  local in_ns=() in_cns=()
  [ -n "$ns" ] && in_ns=(ip netns exec "$ns")
  [ -n "$cns" ] && in_cns=(ip netns exec "$cns")
  cat >"$dir/$name.toml" <<EOF
[server]
listen = "$listen"
shards = 2
metrics_listen = "127.0.0.1:17781"
[limits]
# Every client of the blackhole case has the same address; this is not about admission.
per_address_connections = 0
per_address_accept_rate = 0
per_address_login_rate = 0
[auth]
secrets = ["$SECRET"]
backend_secrets = ["$SECRET-backend"]
[api]
listen = ""
[log]
filter = "warn"
EOF
  "${in_ns[@]}" ./target/release/tether --config "$dir/$name.toml" >"$dir/$name.out" 2>"$dir/$name.err" &
  local server=$!
  pids+=("$server")
  for _ in $(seq 200); do grep -qs "listening on" "$dir/$name.out" && break; sleep 0.05; done
  grep -qs "listening on" "$dir/$name.out" || { cat "$dir/$name.out" "$dir/$name.err" >&2; exit 1; }
  local fd0 rss0
  fd0=$(ls "/proc/$server/fd" | wc -l)
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  # The clients run in a process group of their own so SIGKILL reaches every worker.
  setsid "${in_cns[@]}" ./target/release/tether-loadgen idle -n "$N" --rate 5000 \
    --interval "${LEASE_S}s" --duration 300s --server "$target" --secret "$SECRET" --quiet \
    $([ -n "$cns" ] && echo --sources 0) >"$dir/$name.loadgen" 2>&1 &
  local lg=$!
  pids+=("$lg")
  python3 - "$name" "$N" "$bound" "$server" "$fd0" "$rss0" "$ns" "$cut" "$lg" "$hold" <<'PY'
import re, subprocess, sys, time
name, n, bound, server, fd0, rss0, ns, cut, lg, hold = sys.argv[1:]
n, bound, hold = int(n), float(bound), float(hold)
prefix = ["ip", "netns", "exec", ns] if ns else []
def metrics():
    out = subprocess.run(prefix + ["curl", "-s", "127.0.0.1:17781/metrics"],
                         capture_output=True, text=True, timeout=10).stdout
    return out
def total(text, pat):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if re.match(pat, l))
def clients(text):
    return int(total(text, r'tether_connections_by_state\{.*state="client"'))
deadline = time.time() + 120
while clients(metrics()) < n:
    if time.time() > deadline:
        sys.exit(f"{name}: only {clients(metrics())} of {n} clients logged in")
    time.sleep(0.25)
rss_loaded = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{server}/status").read()).group(1))
print(f"{name}: {n} clients logged in; server RSS {rss_loaded/1024:.1f} MiB")
if hold:
    time.sleep(hold)
    print(f"{name}: {clients(metrics())} clients after heartbeating for {hold:.0f} s")
t0 = time.time()
if cut == "killpg":
    __import__("os").killpg(int(lg), 9)
else:
    subprocess.run(cut, shell=True, check=True)
first = None
while True:
    t = time.time() - t0
    text = metrics()
    c = clients(text)
    if first is None and c < n:
        first = t
    if c == 0 or t > bound + 30:
        break
    time.sleep(0.25)
time.sleep(1)  # the last scrape's connection to close
fds = len(__import__("os").listdir(f"/proc/{server}/fd"))
rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{server}/status").read()).group(1))
agg = {}
for line in text.splitlines():
    m = re.match(r'tether_closes_total\{.*reason="(\w+)".*\} (\S+)', line)
    if m:
        agg[m.group(1)] = agg.get(m.group(1), 0) + int(float(m.group(2)))
agg = {k: v for k, v in agg.items() if v}
state = "all freed" if c == 0 else f"{c} still held"
first = "-" if first is None else f"{first:.1f}"
print(f"{name}: {state} {t:.1f} s after the cut (the first after {first} s; bound {bound:.0f} s)")
print(f"{name}: closes by reason {agg}")
print(f"{name}: server descriptors {fd0} before the clients, {fds} after; RSS {int(rss0)/1024:.1f} MiB before, {rss/1024:.1f} MiB after")
sys.exit(0 if c == 0 and t <= bound else 1)
PY
  local rc=$?
  kill -9 -- "-$lg" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  return $rc
}

rc=0
if [ "$WHAT" = sigkill ] || [ "$WHAT" = both ]; then
  run_case sigkill "" "127.0.0.1:17780" "" "127.0.0.1:17780" killpg 5 0 || rc=1
fi
if [ "$WHAT" = blackhole ] || [ "$WHAT" = both ]; then
  ip netns add "$ns_s"; ip netns add "$ns_c"
  ip link add tdc-s netns "$ns_s" type veth peer name tdc-c netns "$ns_c"
  ip -n "$ns_s" addr add 198.18.0.1/24 dev tdc-s
  ip -n "$ns_c" addr add 198.18.0.2/24 dev tdc-c
  for ns in "$ns_s" "$ns_c"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_s" link set tdc-s up; ip -n "$ns_c" link set tdc-c up
  # Room for N ports from the clients' one address.
  ip netns exec "$ns_c" sysctl -qw net.ipv4.ip_local_port_range="10000 60999"
  bound=$(python3 -c "print($LEASE_S * 1.5 + 10 + 2)")
  run_case blackhole "$ns_s" "198.18.0.1:17780" "$ns_c" "198.18.0.1:17780" \
    "ip -n $ns_c link set tdc-c down" "$bound" "$LEASE_S" || rc=1
fi
exit $rc
