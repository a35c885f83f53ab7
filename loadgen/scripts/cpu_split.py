#!/usr/bin/env python3
"""Where a server's CPU goes, from a `perf record -g` profile of the server process.

Usage: cpu_split.py PERF_DATA [--json]

Each sample is put in one bucket by its kernel call chain, the same way for an io_uring and
an epoll server:

  own code   the sample's leaf is in the server's own binary or its libraries
  delivery   softirq work in the server's context (under handle_softirqs or __release_sock):
             on loopback, putting the server's reply into the client's socket, waking the
             client and taking its ACK back; TCP timers
  send       the send path down to the device (tcp_sendmsg), without the above
  receive    the receive path (tcp_recvmsg), without the above
  sleep      sleeping and waking (schedule, io_cqring_wait, epoll_wait)
  kernel     the rest of the kernel: system call entry, io_uring's and epoll's bookkeeping

Prints each bucket's share of the samples, and the sample count: with N samples a share p
is known to about sqrt(p(1-p)/N).
"""
import json
import subprocess
import sys

BUCKETS = ["own code", "delivery", "send", "receive", "sleep", "kernel"]
SOFTIRQ = ("handle_softirqs", "__release_sock", "net_rx_action")
SEND = ("tcp_sendmsg", "tcp_sendmsg_locked", "sock_sendmsg", "io_send")
RECV = ("tcp_recvmsg", "tcp_recvmsg_locked", "sock_recvmsg", "io_recv", "sock_read_iter")
SLEEP = ("schedule", "__schedule", "schedule_hrtimeout_range", "io_cqring_wait",
         "ep_poll", "do_epoll_wait", "finish_task_switch.isra.0")


def bucket(frames):
    """frames: (symbol, dso) from the leaf outwards."""
    if not frames:
        return "kernel"
    leaf_dso = frames[0][1]
    if leaf_dso != "[kernel.kallsyms]":
        return "own code"
    syms = {s for s, d in frames if d == "[kernel.kallsyms]"}
    if syms.intersection(SOFTIRQ):
        return "delivery"
    if syms.intersection(SEND):
        return "send"
    if syms.intersection(RECV):
        return "receive"
    if syms.intersection(SLEEP):
        return "sleep"
    return "kernel"


def split(path):
    out = subprocess.run(
        ["perf", "script", "--no-inline", "-i", path, "-F", "ip,sym,dso"],
        capture_output=True, text=True, check=True).stdout
    counts = dict.fromkeys(BUCKETS, 0)
    frames = []
    for line in out.splitlines() + [""]:
        line = line.strip()
        if not line:
            if frames:
                counts[bucket(frames)] += 1
            frames = []
            continue
        # "ADDR SYMBOL (DSO)"; the symbol may hold spaces and parentheses.
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[1].endswith(")") or " (" not in parts[1]:
            continue
        sym, dso = parts[1].rsplit(" (", 1)
        frames.append((sym, dso[:-1]))
    total = sum(counts.values())
    return {"samples": total,
            "shares": {b: (counts[b] / total if total else 0.0) for b in BUCKETS}}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    result = split(sys.argv[1])
    if "--json" in sys.argv[2:]:
        print(json.dumps(result))
        return
    for b in BUCKETS:
        print(f"{100 * result['shares'][b]:5.1f} %  {b}")
    print(f"{result['samples']} samples")


if __name__ == "__main__":
    main()
