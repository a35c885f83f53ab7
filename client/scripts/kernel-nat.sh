#!/usr/bin/env bash
# A NAT on this machine to watch the heartbeat learn against: three network namespaces,
# client 198.18.0.2 -> router (MASQUERADE, conntrack timeout T s) -> server 198.18.1.2.
# Segments of a flow conntrack forgot are dropped silently (tcp_loose=0, ctstate INVALID).
#
#   sudo client/scripts/kernel-nat.sh up 5     # T = 5 s
#   sudo client/scripts/kernel-nat.sh down
#
# Namespaces are "$PREFIX-cli", "$PREFIX-rtr", "$PREFIX-srv" (PREFIX defaults to "tw").
set -euo pipefail
PREFIX=${PREFIX:-tw}
C=$PREFIX-cli R=$PREFIX-rtr S=$PREFIX-srv

down() {
  for ns in "$C" "$R" "$S"; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

up() {
  local t=$1
  down
  trap 'down; echo "setup failed" >&2' ERR
  for ns in "$C" "$R" "$S"; do ip netns add "$ns"; done
  ip link add v0 netns "$C" type veth peer name cl netns "$R"
  ip link add v0 netns "$S" type veth peer name sv netns "$R"
  ip -n "$C" addr add 198.18.0.2/24 dev v0
  ip -n "$R" addr add 198.18.0.1/24 dev cl
  ip -n "$R" addr add 198.18.1.1/24 dev sv
  ip -n "$S" addr add 198.18.1.2/24 dev v0
  for l in "$C v0" "$R cl" "$R sv" "$S v0" "$C lo" "$R lo" "$S lo"; do
    set -- $l
    ip -n "$1" link set "$2" up
  done
  ip -n "$C" route add default via 198.18.0.1
  if command -v iptables >/dev/null; then
    ip netns exec "$R" iptables -t nat -A POSTROUTING -o sv -j MASQUERADE
    ip netns exec "$R" iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
    ip netns exec "$R" iptables -A INPUT -m conntrack --ctstate INVALID -j DROP
  else
    ip netns exec "$R" nft -f - <<NFT
table ip tnat {
  chain post { type nat hook postrouting priority srcnat; oifname "sv" masquerade; }
  chain fwd { type filter hook forward priority filter; ct state invalid drop; }
  chain inp { type filter hook input priority filter; ct state invalid drop; }
}
NFT
  fi
  ip netns exec "$R" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
  ip netns exec "$R" sh -c "echo $t > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
  ip netns exec "$R" sh -c "echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose"
  trap - ERR
  echo "client netns $C (198.18.0.2), server netns $S (198.18.1.2), NAT timeout ${t}s"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up SECONDS}" ;;
  down) down ;;
  *) echo "usage: $0 up SECONDS | down" >&2; exit 2 ;;
esac
