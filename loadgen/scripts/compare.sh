#!/usr/bin/env bash
# tether side by side with what an operator could run today (mosquitto, nats-server, rumqttd)
# and with the physical floor (loadgen/examples/echo_floor.rs), measured by tether-loadgen on
# this machine in one run, and written into a marked section of BENCHMARKS.md.
#
#   bash loadgen/scripts/compare.sh                    # full run: 19,000 connections, about 12 min
#                                                      # on 2 CPUs (the first time, rumqttd builds
#                                                      # meanwhile: about 3 min)
#   bash loadgen/scripts/compare.sh -n 2000 --quick    # small and short, to check the script
#   bash loadgen/scripts/compare.sh --tether before=/old/tether --tether after=target/release/tether
#   bash loadgen/scripts/compare.sh --runs upstream --servers tether,mosquitto,nats --section compare-upstream
#                                                      # the upstream shape alone, in its own section
#   bash loadgen/scripts/compare.sh --tls              # the idle shapes over TLS 1.3, in the
#                                                      # section compare-tls (also: TLS=1 bash ...)
#   bash loadgen/scripts/compare.sh --transport ws     # idle shapes and pushes over WebSocket, in
#                                                      # the section compare-ws (also: WS=1 bash ...)
#
# Options:
#   --servers LIST     comma-separated, in order (default: tether,floor,mosquitto,nats,rumqttd)
#   --runs LIST        the shapes measured, comma-separated (default:
#                      connect,spread,burst,push,upstream); the table has the rows of these only.
#                      The echo floor routes nothing, so it plays no push or upstream run
#   -n N               connections in every run (default 19000: the open-files limit of one
#                      server process, 20,000, less a margin)
#   --tether L=PATH    a tether binary to measure, labelled L; repeatable (default: this tree's
#                      release build, labelled "tether", built by the script)
#   --tether-env L=NAME=VALUE
#                      an environment variable for the tether labelled L, e.g. a setting:
#                      --tether gather-20ms=target/release/tether
#                      --tether-env gather-20ms=TETHER_SERVER__BATCH_WAIT_US=20000; repeatable
#   --out FILE         the file whose section is rewritten (default BENCHMARKS.md at the root);
#                      "-" writes nothing, only prints
#   --section NAME     the section's markers are <!-- NAME:begin --> and <!-- NAME:end -->
#                      (default "compare"; appended at the end when the file has none)
#   --duration D       idle phase of the spread shape (default 60s)
#   --rounds R         rounds of the burst shape (default 20)
#   --push-rate P      pushes per second (default 2000), for --push-for (default 20s)
#   --upstream-rate U  upstream messages per second from all N clients together (default 2000),
#                      for --upstream-for (default 20s): tether's Upstream to a backend sink in
#                      the loadgen (a backend connection with the UPSTREAM flag that accepts each
#                      message at once); MQTT: QoS 0 publishes to up/<user>, one subscriber of
#                      up/#; NATS: PUB to up.<user>, one queue subscriber of up.*
#   --port-base P      servers listen on 127.0.0.1:P, P+1, ... (default 17900)
#   --work DIR         JSON reports, configs and server logs (default target/compare)
#   --quick            short phases (10 s idle, 5 rounds, 5 s of pushes and of upstream) for a check
#   --report-only      measure nothing: rewrite the section from the reports already in --work
#   --profile          also record where each server's CPU goes during the idle phase of the
#                      spread and burst runs (perf record -g, loadgen/scripts/profile-load.sh),
#                      split by kind of work (loadgen/scripts/cpu_split.py), with tether's ring
#                      counters per heartbeat; a second table per shape. Needs perf
#   --tls              every connection speaks TLS 1.3 (or TLS=1 in the environment): the script
#                      makes a self-signed P-256 certificate for 127.0.0.1 (openssl) and starts
#                      tether with a [tls] listener (its plaintext listener on PORT+500, unused),
#                      mosquitto with a TLS listener and nats-server with a tls block (its
#                      clients upgrade after INFO); the loadgen runs with --tls --ca. The echo
#                      floor and rumqttd stay plaintext and are not measured. Defaults change
#                      to --servers tether,mosquitto,nats --runs spread,burst --section
#                      compare-tls (each still overridable)
#   --transport ws     every connection speaks WebSocket (or WS=1 in the environment): tether
#                      with a [websocket] listener on the measured port (its plaintext listener
#                      on PORT+500, unused), mosquitto with a `protocol websockets` listener
#                      (and a plain one on PORT+500, unused: mosquitto 2.0 does not start with
#                      WebSocket listeners alone), nats-server with a websocket block (its plain
#                      listener on PORT+500, unused); the loadgen runs with --transport ws. The
#                      echo floor and rumqttd have no WebSocket listener and are not measured.
#                      Defaults change to --servers tether,mosquitto,nats --runs
#                      spread,burst,push --section compare-ws (compare-wss with --tls: wss://,
#                      each server's WebSocket listener with the certificate)
#
# Peers missing from the machine are installed: mosquitto and nats-server from Debian packages
# (apt-get), rumqttd with `cargo install rumqttd` (not --locked: its lock file no longer builds
# on current Rust), started at once in the background since it compiles for minutes. A peer that
# cannot be installed or started is reported as such in the table. Every server is started by
# this script on loopback with a configuration written for this load, fresh for every
# measurement, and stopped by its pid; an exit trap stops whatever is still running.
#
# Needs: a Rust toolchain, python3, root for apt-get (or the peers already installed).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
command_line="bash loadgen/scripts/compare.sh${*:+ $*}"

servers="tether,floor,mosquitto,nats,rumqttd"
N=19000
tethers=()
declare -A tether_env=()
out_file="$root/BENCHMARKS.md"
section=compare
IDLE_FOR=60s
ROUNDS=20
PUSH_RATE=2000
PUSH_FOR=20s
UPSTREAM_RATE=2000
UPSTREAM_FOR=20s
all_runs="connect,spread,burst,push,upstream"
runs_wanted=$all_runs
PORT_BASE=17900
work="$target/compare"
INTERVAL=10s
report_only=0
profile=0
tls=0
[[ -n "${TLS:-}" && "${TLS:-}" != 0 ]] && tls=1
ws=0
[[ -n "${WS:-}" && "${WS:-}" != 0 ]] && ws=1
servers_given=0
runs_given=0
section_given=0

die() { echo "compare.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --servers) servers=$2; servers_given=1; shift 2 ;;
        -n) N=$2; shift 2 ;;
        --tether) [[ "$2" == *=* ]] || die "--tether wants LABEL=PATH"; tethers+=("$2"); shift 2 ;;
        --tether-env)
            [[ "$2" =~ ^[^=]+=[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--tether-env wants LABEL=NAME=VALUE"
            # One NAME=VALUE per line, so a value may hold spaces.
            tether_env[${2%%=*}]+="${2#*=}"$'\n'; shift 2 ;;
        --out) out_file=$2; shift 2 ;;
        --section) section=$2; section_given=1; shift 2 ;;
        --duration) IDLE_FOR=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --push-rate) PUSH_RATE=$2; shift 2 ;;
        --push-for) PUSH_FOR=$2; shift 2 ;;
        --upstream-rate) UPSTREAM_RATE=$2; shift 2 ;;
        --upstream-for) UPSTREAM_FOR=$2; shift 2 ;;
        --runs) runs_wanted=$2; runs_given=1; shift 2 ;;
        --port-base) PORT_BASE=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --quick) IDLE_FOR=10s; ROUNDS=5; PUSH_FOR=5s; UPSTREAM_FOR=5s; shift ;;
        --report-only) report_only=1; shift ;;
        --profile) profile=1; shift ;;
        --tls) tls=1; shift ;;
        --transport)
            case "$2" in
                ws) ws=1 ;;
                tcp) ws=0 ;;
                *) die "--transport takes tcp or ws" ;;
            esac
            shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$N" =~ ^[0-9]+$ && "$N" -gt 0 ]] || die "-n wants a positive number"
if [[ $ws == 1 ]]; then
    [[ $servers_given == 1 ]] || servers="tether,mosquitto,nats"
    [[ $runs_given == 1 ]] || runs_wanted="spread,burst,push"
    if [[ $section_given == 0 ]]; then
        section=compare-ws
        [[ $tls == 1 ]] && section=compare-wss
    fi
elif [[ $tls == 1 ]]; then
    [[ $servers_given == 1 ]] || servers="tether,mosquitto,nats"
    [[ $runs_given == 1 ]] || runs_wanted="spread,burst"
    [[ $section_given == 1 ]] || section=compare-tls
fi
IFS=, read -ra runs_list <<<"$runs_wanted"
[[ $profile == 1 ]] && ! command -v perf >/dev/null && die "--profile needs perf (apt-get install linux-perf)"
[[ ${#runs_list[@]} -gt 0 ]] || die "--runs wants at least one of $all_runs"
for run in "${runs_list[@]}"; do
    [[ ",$all_runs," == *",$run,"* ]] || die "unknown run $run (--runs takes $all_runs)"
done
mkdir -p "$work"
log() { echo "== $*" >&2; }
if [[ $report_only == 0 ]]; then
rm -f "$work"/*.json "$work"/*.status "$work"/*.cmd "$work"/*.version "$work"/*.backlog "$work/loadavg-end" \
    "$work"/*.perf "$work"/*.perf.old "$work"/*.ring-start "$work"/*.ring-end
echo "${runs_list[*]}" >"$work/runs"
echo "$tls" >"$work/tls"
echo "$ws" >"$work/ws"

# Every server and the loadgen get the open-files hard limit.
ulimit -n "$(ulimit -Hn)"
cut -d' ' -f1-3 /proc/loadavg >"$work/loadavg"
date -u '+%Y-%m-%d %H:%M UTC' >"$work/date"
echo "$command_line" >"$work/command"

# ---- what is still running, stopped by pid on exit ----------------------------------------
server_pid=""
install_pid=""
current_label=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
        server_pid=""
    fi
}
cleanup() {
    stop_server
    if [[ -n "$install_pid" ]]; then
        kill -TERM "$install_pid" 2>/dev/null
        wait "$install_pid" 2>/dev/null
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wanted() { [[ ",$servers," == *",$1,"* ]]; }

# ---- installing the peers -----------------------------------------------------------------
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
rumqttd_bin=$(command -v rumqttd || { [[ -x "$cargo_bin/rumqttd" ]] && echo "$cargo_bin/rumqttd"; } || true)
if wanted rumqttd && [[ -z "$rumqttd_bin" ]]; then
    log "installing rumqttd in the background (cargo install rumqttd; log: $work/rumqttd-install.log)"
    (cd /tmp && exec cargo install rumqttd) >"$work/rumqttd-install.log" 2>&1 &
    install_pid=$!
fi

apt_missing=()
wanted mosquitto && ! command -v mosquitto >/dev/null && apt_missing+=(mosquitto)
wanted nats && ! command -v nats-server >/dev/null && apt_missing+=(nats-server)
if [[ ${#apt_missing[@]} -gt 0 ]]; then
    log "installing ${apt_missing[*]} (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"; } \
        >"$work/apt-install.log" 2>&1; then
        log "apt-get failed; see $work/apt-install.log"
    fi
fi

# ---- building -----------------------------------------------------------------------------
log "building tether, tether-loadgen and the echo floor (release)"
cargo build --release -p tether-server -p tether-loadgen --bins --example echo_floor >&2 \
    || die "the build failed"
loadgen="$target/release/tether-loadgen"
floor="$target/release/examples/echo_floor"
[[ ${#tethers[@]} -eq 0 ]] && tethers=("tether=$target/release/tether")
for label in "${!tether_env[@]}"; do
    known=0
    for t in "${tethers[@]}"; do [[ "${t%%=*}" == "$label" ]] && known=1; done
    [[ $known == 1 ]] || die "--tether-env names $label, which no --tether labels"
done

# ---- TLS: one self-signed certificate for every server --------------------------------------
# CA:FALSE: rustls (webpki) refuses a CA certificate as a server's own, which is what
# `openssl req -x509` makes unless told otherwise.
cert="$work/cert/cert.pem"
cert_key="$work/cert/key.pem"
if [[ $tls == 1 ]]; then
    mkdir -p "$work/cert"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -keyout "$cert_key" -out "$cert" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE >"$work/cert/openssl.log" 2>&1 \
        || die "openssl could not make a certificate (see $work/cert/openssl.log)"
    # mosquitto drops its privileges and must still read the key.
    chmod 644 "$cert" "$cert_key"
fi

# ---- starting one server ------------------------------------------------------------------
# Each start_* writes the server's configuration into $work, starts it in the background and
# sets server_pid; start_server then waits for its port.

start_tether() { # BINARY PORT (the environment of --tether-env for $current_label)
    local -a with=()
    [[ -n "${tether_env[$current_label]:-}" ]] && mapfile -t with < <(printf '%s' "${tether_env[$current_label]}")
    if [[ $ws == 1 ]]; then
        # The WebSocket listener is the one measured (wss:// with --tls: [tls] names the
        # certificate, its own listener stays off); the plaintext one sits unused 500 ports up.
        {
            echo "[websocket]"
            echo "listen = \"127.0.0.1:$2\""
            if [[ $tls == 1 ]]; then
                echo "tls = true"
                echo "[tls]"
                echo "certificate = \"$cert\""
                echo "key = \"$cert_key\""
            fi
        } >"$work/tether-ws.toml"
        env "${with[@]}" "$1" --config "$work/tether-ws.toml" --listen "127.0.0.1:$(($2 + 500))" --shards 0 \
            --drain-ms 500 --log warn &
    elif [[ $tls == 1 ]]; then
        # The TLS listener is the one measured; the plaintext one (which the server always
        # has) sits unused 500 ports up.
        cat >"$work/tether-tls.toml" <<EOF
[tls]
listen = "127.0.0.1:$2"
certificate = "$cert"
key = "$cert_key"
EOF
        env "${with[@]}" "$1" --config "$work/tether-tls.toml" --listen "127.0.0.1:$(($2 + 500))" --shards 0 \
            --drain-ms 500 --log warn &
    else
        env "${with[@]}" "$1" --listen "127.0.0.1:$2" --shards 0 --drain-ms 500 --log warn &
    fi
    server_pid=$!
}

start_floor() { # PORT
    "$floor" "127.0.0.1:$1" &
    server_pid=$!
}

start_mosquitto() { # PORT
    # Persistence and logging off, no connection cap, any keep alive, no $SYS topics.
    local tls_lines="" ws_lines="" plain_listener=""
    [[ $tls == 1 ]] && tls_lines=$(printf 'certfile %s\nkeyfile %s' "$cert" "$cert_key")
    if [[ $ws == 1 ]]; then
        ws_lines=$(printf 'socket_domain ipv4\nprotocol websockets')
        # mosquitto 2.0 refuses to start with WebSocket listeners only ("Unable to start any
        # listening sockets"), so a plain one sits unused 500 ports up.
        plain_listener="listener $(($1 + 500)) 127.0.0.1"
    fi
    cat >"$work/mosquitto.conf" <<EOF
listener $1 127.0.0.1
$ws_lines
$tls_lines
$plain_listener
allow_anonymous true
persistence false
log_dest none
max_connections -1
max_keepalive 65535
max_packet_size 1048576
set_tcp_nodelay true
sys_interval 0
EOF
    mosquitto -c "$work/mosquitto.conf" &
    server_pid=$!
}

start_nats() { # PORT
    # As many connections as the process may open files; the server's own PING to clients
    # every hour only (the loadgen's heartbeats are what is measured); logging quiet, no
    # monitoring port.
    local tls_block="" listen_line="listen: 127.0.0.1:$1"
    [[ $tls == 1 ]] && tls_block=$(printf 'tls {\n  cert_file: "%s"\n  key_file: "%s"\n}' "$cert" "$cert_key")
    if [[ $ws == 1 ]]; then
        # The WebSocket listener is measured (over TLS: its own tls block); the plain one sits
        # unused 500 ports up.
        listen_line="listen: 127.0.0.1:$(($1 + 500))"
        local ws_tls="no_tls: true"
        [[ $tls == 1 ]] && ws_tls=$tls_block
        tls_block=$(printf 'websocket {\n  listen: "127.0.0.1:%s"\n  %s\n}' "$1" "$ws_tls")
    fi
    cat >"$work/nats.conf" <<EOF
$listen_line
$tls_block
max_connections: $(ulimit -Hn)
max_payload: 1048576
ping_interval: "1h"
ping_max: 3
write_deadline: "10s"
debug: false
trace: false
logtime: false
EOF
    nats-server -c "$work/nats.conf" &
    server_pid=$!
}

start_rumqttd() { # PORT
    # One MQTT 3.1.1 listener; no delay between accepts (the default throttles to 1,000
    # connections per second); room for as many connections as the process may open files (the
    # router allocates its tables for this many up front); small commit-log segments.
    cat >"$work/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = $(ulimit -Hn)
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 2

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$1"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
    "$rumqttd_bin" -q -c "$work/rumqttd.toml" &
    server_pid=$!
}

# start_server NAME PORT [TETHER_BINARY] >server log: 0 when it listens, 1 otherwise.
start_server() {
    local name=$1 port=$2
    stop_server
    case "$name" in
        tether) start_tether "$3" "$port" ;;
        floor) start_floor "$port" ;;
        mosquitto) start_mosquitto "$port" ;;
        nats) start_nats "$port" ;;
        rumqttd) start_rumqttd "$port" ;;
    esac
    for _ in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || { wait "$server_pid" 2>/dev/null; server_pid=""; return 1; }
        local listening
        listening=$(ss -Hltn "( sport = :$port )" 2>/dev/null | head -1)
        if [[ -n "$listening" ]]; then
            # The listen backlog the server asked for (ss's Send-Q of a listening socket): a
            # connect burst beyond it waits for SYN retries, which shows in the connect rate.
            awk '{print $3}' <<<"$listening" >"$work/$current_label.backlog"
            return 0
        fi
        sleep 0.1
    done
    stop_server
    return 1
}

# ---- measuring one server -----------------------------------------------------------------
# measure LABEL NAME PROTOCOL PORT [TETHER_BINARY]: the runs of --runs, each against a fresh
# server.
measure() {
    local label=$1 name=$2 protocol=$3 port=$4 bin=${5:-}
    current_label=$label
    local S=(--server "127.0.0.1:$port" --protocol "$protocol" --json --quiet)
    local tls_args=""
    if [[ $tls == 1 ]]; then
        S+=(--tls --ca "$cert")
        tls_args=" --tls --ca CERT"
    fi
    if [[ $ws == 1 ]]; then
        S+=(--transport ws)
        tls_args="$tls_args --transport ws"
    fi
    # A tether build from before client and backend secrets were separate signs backend tokens
    # with its one (client) secret: give the loadgen that secret for its backend logins.
    if [[ -n "$bin" ]] && ! "$bin" config 2>/dev/null | grep -q '^backend_secrets'; then
        S+=(--backend-secret tether-dev-secret-not-for-production)
    fi
    local runs=()
    for run in "${runs_list[@]}"; do
        # The echo floor answers Login and Ping only: it routes nothing.
        [[ "$name" == floor && ( "$run" == push || "$run" == upstream ) ]] && continue
        runs+=("$run")
    done
    for run in "${runs[@]}"; do
        if ! start_server "$name" "$port" "$bin" >>"$work/$label.server.log" 2>&1; then
            if [[ $ws == 1 && "$name" == mosquitto ]] && grep -qi "websockets support not available" "$work/$label.server.log"; then
                # A build without libwebsockets says so when asked for `protocol websockets`.
                echo "not available (this mosquitto build has no WebSocket support)" >"$work/$label.status"
            else
                echo "did not start (see $work/$label.server.log)" >"$work/$label.status"
            fi
            log "$label did not start"
            return
        fi
        local args
        case "$run" in
            connect) args=(connect -n "$N" --rate 50000) ;;
            spread) args=(idle -n "$N" --rate 2000 --interval "$INTERVAL" --duration "$IDLE_FOR") ;;
            burst) args=(idle -n "$N" --rate 5000 --shape burst --rounds "$ROUNDS" --interval 600s --duration 600s) ;;
            push) args=(push -n "$N" --rate 5000 --interval 600s --msg-rate "$PUSH_RATE" --duration "$PUSH_FOR" --payload 64) ;;
            upstream) args=(upstream -n "$N" --rate 5000 --interval 600s --msg-rate "$UPSTREAM_RATE" --duration "$UPSTREAM_FOR" --payload 64 --backends 1) ;;
        esac
        local during=()
        if [[ $profile == 1 && ( "$run" == spread || "$run" == burst ) ]]; then
            local metrics=""
            # Only tether's metrics: the API on its default address.
            [[ "$name" == tether ]] && metrics=http://127.0.0.1:7780/metrics
            during=(--during-load "bash '$root/loadgen/scripts/profile-load.sh' '$work/$label.$run' $metrics")
        fi
        log "$label $run: tether-loadgen ${args[*]} ${S[*]}"
        echo "tether-loadgen ${args[*]} --server 127.0.0.1:PORT --server-pid PID --protocol PROTOCOL$tls_args" >"$work/$run.cmd"
        if ! "$loadgen" "${args[@]}" "${S[@]}" --server-pid "$server_pid" "${during[@]}" \
            >"$work/$label.$run.json" 2>>"$work/$label.loadgen.log"; then
            rm -f "$work/$label.$run.json"
            log "$label $run failed (see $work/$label.loadgen.log)"
        fi
        stop_server
    done
    echo ok >"$work/$label.status"
}

order=()
IFS=, read -ra wanted_list <<<"$servers"
port=$PORT_BASE
for name in "${wanted_list[@]}"; do
    case "$name" in
        tether)
            for t in "${tethers[@]}"; do
                label=${t%%=*}; bin=${t#*=}
                order+=("$label:tether")
                if [[ ! -x "$bin" ]]; then
                    echo "not found: $bin" >"$work/$label.status"
                    continue
                fi
                settings=""
                [[ -n "${tether_env[$label]:-}" ]] && settings=" with $(printf '%s' "${tether_env[$label]}" | paste -sd' ')"
                echo "${bin#"$root"/}$settings" >"$work/$label.version"
                measure "$label" tether tether "$port" "$bin"
                port=$((port + 1))
            done
            ;;
        floor)
            order+=("floor:floor")
            echo "loadgen/examples/echo_floor.rs" >"$work/floor.version"
            if [[ $ws == 1 ]]; then
                echo "not measured with --transport ws (it speaks tether's stream only)" >"$work/floor.status"
                port=$((port + 1))
                continue
            fi
            if [[ $tls == 1 ]]; then
                echo "not measured with --tls (it speaks plaintext only)" >"$work/floor.status"
                port=$((port + 1))
                continue
            fi
            measure floor floor tether "$port"
            port=$((port + 1))
            ;;
        mosquitto)
            order+=("mosquitto:peer")
            if ! command -v mosquitto >/dev/null; then
                echo "not installed (apt-get install mosquitto failed: see $work/apt-install.log)" >"$work/mosquitto.status"
            else
                mosquitto -h 2>&1 | head -1 | sed 's/^mosquitto version /mosquitto /' >"$work/mosquitto.version"
                measure mosquitto mosquitto mqtt "$port"
            fi
            port=$((port + 1))
            ;;
        nats)
            order+=("nats:peer")
            if ! command -v nats-server >/dev/null; then
                echo "not installed (apt-get install nats-server failed: see $work/apt-install.log)" >"$work/nats.status"
            else
                nats-server --version 2>&1 | head -1 | sed 's/: v/ /' >"$work/nats.version"
                measure nats nats nats "$port"
            fi
            port=$((port + 1))
            ;;
        rumqttd)
            order+=("rumqttd:peer")
            if [[ -n "$install_pid" ]]; then
                log "waiting for cargo install rumqttd"
                wait "$install_pid"
                install_pid=""
                rumqttd_bin=$(command -v rumqttd || { [[ -x "$cargo_bin/rumqttd" ]] && echo "$cargo_bin/rumqttd"; } || true)
            fi
            if [[ $ws == 1 ]]; then
                echo "not measured with --transport ws (no WebSocket listener configured here)" >"$work/rumqttd.status"
            elif [[ $tls == 1 ]]; then
                echo "not measured with --tls (no TLS listener configured here)" >"$work/rumqttd.status"
            elif [[ -z "$rumqttd_bin" ]]; then
                echo "not installed (cargo install rumqttd failed: see $work/rumqttd-install.log)" >"$work/rumqttd.status"
            else
                "$rumqttd_bin" --version 2>&1 | head -1 >"$work/rumqttd.version"
                measure rumqttd rumqttd mqtt "$port"
            fi
            port=$((port + 1))
            ;;
        *) die "unknown server $name (tether, floor, mosquitto, nats, rumqttd)" ;;
    esac
done
printf '%s\n' "${order[@]}" >"$work/order"
# The load just after the last run: other work that started meanwhile shows here.
cut -d' ' -f1-3 /proc/loadavg >"$work/loadavg-end"
fi

# ---- the table ----------------------------------------------------------------------------
python3 - "$work" "$out_file" "$section" "$N" "$INTERVAL" "$IDLE_FOR" "$ROUNDS" "$PUSH_RATE" "$PUSH_FOR" "$UPSTREAM_RATE" "$UPSTREAM_FOR" <<'PY'
import json, os, platform, sys

(work, dest, section, n, interval, idle_for, rounds, push_rate, push_for, upstream_rate,
 upstream_for) = sys.argv[1:]
order = [line.strip().split(":") for line in open(os.path.join(work, "order")) if line.strip()]
ALL_RUNS = ("connect", "spread", "burst", "push", "upstream")
# The runs the measurement made (a work directory from before --runs made the first four).
try:
    runs_made = open(os.path.join(work, "runs")).read().split()
except OSError:
    runs_made = ["connect", "spread", "burst", "push"]

def read(name, default=""):
    try:
        return open(os.path.join(work, name)).read().strip()
    except OSError:
        return default

def report(label, run):
    try:
        with open(os.path.join(work, f"{label}.{run}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"

# A cell is (number or None, text). Numbers only where the instrument resolves them
# (loadgen/src/resolution.rs); otherwise the text says why there is none.
def memory(r):
    if r is None or not r.get("server"):
        return None, "run failed"
    sv, conns = r["server"], r["online_after_ramp"]
    v = sv["user_bytes_per_conn"]
    if v is not None:
        return v, f"{v:.0f} B"
    res = sv["instruments"]["page_bytes"]
    return None, f"< resolution ({res} B / {conns} conns = {res / max(conns, 1):.2f} B; RSS {sv['rss_growth_bytes']:+d} B)"

def tcp_memory(r):
    if r is None or not r.get("server"):
        return None, "run failed"
    sv, conns = r["server"], r["online_after_ramp"]
    v = sv["kernel_tcp_bytes_per_conn"]
    if v is not None:
        return v, f"{v:.0f} B"
    res = sv["instruments"]["tcp_mem_bytes"]
    return None, f"< resolution ({res / 2**20:.0f} MiB / {conns} = {res / max(conns, 1):.0f} B)"

def cpu(r, key, units_key):
    if r is None or not r.get("server"):
        return None, "run failed"
    sv = r["server"]
    units = r["load"][units_key]
    v = sv[key]
    if v is not None:
        return v, f"{v:.2f} µs"
    if units == 0:
        return None, "none counted"
    tick = sv["instruments"]["cpu_tick_us"]
    ticks = sv["load_cpu_us"] // tick
    return None, f"< resolution ({ticks} ticks of {tick // 1000} ms / {units}: ≤ {(ticks + 1) * tick / units:.2f} µs)"

def latency(r, name, q):
    if r is None:
        return None, "run failed"
    p = r["latency_us"].get(name)
    if not p or not p["count"]:
        why = r.get("latency_not_applicable", {}).get(name)
        return None, f"n/a ({why})" if why else "none delivered"
    return p[q] / 1000, f"{p[q] / 1000:.3f} ms"

def upstream_throughput(r):
    # tether: messages the backend sink accepted, each answered with a result to its client;
    # MQTT and NATS: messages the subscriber received (they have no result).
    if r is None:
        return None, "run failed"
    key = "upstream_accepted" if r["protocol"] == "tether" else "upstream_received"
    v = r["throughput_per_s"].get(key, 0.0)
    return v, f"{v:,.0f} /s"

def upstream_received(r):
    if r is None:
        return None, "run failed"
    t = r["totals"]
    text = f"{t['upstream_received']} of {t['upstream_sent']}"
    if r["protocol"] == "tether" and t["upstream_accepted"] != t["upstream_received"]:
        text += f" ({t['upstream_accepted']} accepted)"
    return t["upstream_received"], text

def rate(r):
    if r is None:
        return None, "run failed"
    return r["connect_rate_per_s"], f"{r['connect_rate_per_s']:,.0f} /s"

def online(r):
    if r is None:
        return None, "run failed"
    return r["online_after_ramp"], f"{r['online_after_ramp']}"

def delivered(r):
    if r is None:
        return None, "run failed"
    return r["load"]["delivered"], f"{r['load']['delivered']} of {r['load']['pushes_sent']}"

def errors(label):
    total, runs = 0, 0
    for run in ALL_RUNS:
        r = report(label, run)
        if r is not None:
            runs += 1
            total += sum(r["errors"].values())
    return (total, f"{total}") if runs else (None, "no run")

# (figure, which way is better, the run it comes from (None: all), how to get it)
rows = [
    (f"connections online after the ramp of the spread run ({n} asked)", None, "spread", lambda l: online(report(l, "spread"))),
    ("server memory per idle connection (RSS growth / connections)", "low", "spread", lambda l: memory(report(l, "spread"))),
    ("kernel TCP buffer memory per connection (sockstat, both ends)", "low", "spread", lambda l: tcp_memory(report(l, "spread"))),
    (f"server CPU per heartbeat, spread ({n} conns, one ping each per {interval})", "low", "spread",
     lambda l: cpu(report(l, "spread"), "cpu_us_per_heartbeat", "pongs")),
    (f"server CPU per heartbeat, burst ({rounds} rounds of {n} pings at once)", "low", "burst",
     lambda l: cpu(report(l, "burst"), "cpu_us_per_heartbeat", "pongs")),
    (f"server CPU per push ({push_rate}/s for {push_for}, 64-byte payload)", "low", "push",
     lambda l: cpu(report(l, "push"), "cpu_us_per_push", "pushes_sent")),
    ("pushes delivered of pushes sent", None, "push", lambda l: delivered(report(l, "push"))),
    ("push latency p50, end to end", "low", "push", lambda l: latency(report(l, "push"), "push_e2e", "p50")),
    ("push latency p99, end to end", "low", "push", lambda l: latency(report(l, "push"), "push_e2e", "p99")),
    (f"upstream messages per second ({upstream_rate}/s asked from {n} clients for {upstream_for}; "
     "tether: accepted by the backend sink, peers: received by the subscriber)", "high", "upstream",
     lambda l: upstream_throughput(report(l, "upstream"))),
    ("upstream messages received by the backend sink of sent", None, "upstream",
     lambda l: upstream_received(report(l, "upstream"))),
    ("upstream latency p50, end to end (client → backend sink)", "low", "upstream",
     lambda l: latency(report(l, "upstream"), "upstream_e2e", "p50")),
    ("upstream latency p99, end to end (client → backend sink)", "low", "upstream",
     lambda l: latency(report(l, "upstream"), "upstream_e2e", "p99")),
    (f"server CPU per upstream message ({upstream_rate}/s for {upstream_for}, 64-byte payload)", "low", "upstream",
     lambda l: cpu(report(l, "upstream"), "cpu_us_per_upstream", "upstream_sent")),
    ("connect rate (logins per second; 50,000/s asked)", "high", "connect", lambda l: rate(report(l, "connect"))),
    ("errors, all runs", None, None, errors),
]
if read("ws") == "1":
    # Before the errors row: the upgrade of every connection of the spread run's ramp.
    span = "connect done to 101" + (", TLS handshake included" if read("tls") == "1" else "")
    rows[-1:-1] = [
        (f"WebSocket upgrade latency p50 ({span}; spread run's ramp at 2,000/s)", "low", "spread",
         lambda l: latency(report(l, "spread"), "upgrade", "p50")),
        (f"WebSocket upgrade latency p99 ({span}; spread run's ramp at 2,000/s)", "low", "spread",
         lambda l: latency(report(l, "spread"), "upgrade", "p99")),
    ]
rows = [row for row in rows if row[2] is None or row[2] in runs_made]

def status(label):
    return read(f"{label}.status", "not measured")

def title(label, kind):
    v = read(f"{label}.version")
    if kind == "tether":
        return label
    if kind == "floor":
        return "echo floor"
    return v or label

columns = [(label, kind) for label, kind in order]
tethers = [c for c in columns if c[1] == "tether"]
peers = [c for c in columns if c[1] == "peer"]
head = ["figure"] + [title(l, k) for l, k in columns] + [f"{l} ÷ best peer" for l, _ in tethers]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for name, better, run, get in rows:
    cells, values = [], {}
    for label, kind in columns:
        st = status(label)
        if st != "ok":
            short = st.split(" (")[0]
            cells.append(short)
            continue
        if kind == "floor" and run in ("push", "upstream"):
            cells.append("n/a (routes nothing)")
            continue
        v, text = get(label)
        values[label] = v
        cells.append(text)
    for label, _ in tethers:
        peer_vals = [(values.get(p), p) for p, _ in peers if values.get(p) is not None and values.get(p) > 0]
        mine = values.get(label)
        if better is None or mine is None or not peer_vals:
            cells.append("n/a")
            continue
        best, who = (min if better == "low" else max)(peer_vals)
        cells.append(f"{mine / best:.2f}× ({title(who, 'peer')})")
    lines.append("| " + name + " | " + " | ".join(cells) + " |")

table = "\n".join(lines)
machine = f"{cpu_model()}, {os.cpu_count()} CPUs (nproc), Linux {platform.release()}"
notes = []
for label, kind in columns:
    st = status(label)
    if st != "ok":
        notes.append(f"- **{title(label, kind)}**: {st}")
for label, kind in tethers:
    if status(label) == "ok":
        notes.append(f"- {label}: `{read(label + '.version')}`")
for label, kind in columns:
    kinds = []
    for run in ALL_RUNS:
        r = report(label, run)
        if r and r["errors"]:
            kinds.append(f"{run}: " + ", ".join(f"{k} × {v}" for k, v in sorted(r["errors"].items())))
    if kinds:
        notes.append(f"- errors of {title(label, kind)} (a connect or login not done in 10 s is a timeout): " + "; ".join(kinds))
backlogs = [(title(l, k), read(f"{l}.backlog")) for l, k in columns if status(l) == "ok"]
if any(b for _, b in backlogs):
    notes.append("- listen backlog each server asked for (`ss -ltn`, Send-Q): "
                 + ", ".join(f"{t} {b}" for t, b in backlogs if b)
                 + "; connects beyond it in a burst wait for the client's SYN retry (1 s), which the connect rate includes")

cmds = {run: read(f"{run}.cmd") for run in ALL_RUNS}
L = []
L.append(f"Produced by `{read('command')}` (rerun it to regenerate this section): every server on "
         "loopback, started fresh for each run with a configuration written by the script, measured "
         "by `tether-loadgen` with `--server-pid` (RSS and user + system CPU from /proc). "
         f"**N = {n} connections** in every run.\n")
L.append(f"- date: {read('date')}")
L.append(f"- machine: {machine}")
end_load = read("loadavg-end")
end_text = f", when it ended: {end_load} (the 1-minute figure still counts the run's own servers and loadgen)" if end_load else ""
L.append(f"- load average (1, 5, 15 min) when the run started: {read('loadavg')}{end_text}; on a busy machine "
         "the CPU figures and the latency tails include other processes' work")
L.append("- runs per server (the same for all; `--protocol tether`, `mqtt` or `nats`):")
for run, what in [("connect", "connect rate"), ("spread", "memory and heartbeat CPU, spread"),
                  ("burst", "heartbeat CPU, burst"), ("push", "pushes"),
                  ("upstream", "upstream messages (clients → a backend sink in the loadgen)")]:
    if cmds[run]:
        L.append(f"  - {what}: `{cmds[run]}`")
if read("ws") == "1":
    wss = read("tls") == "1"
    L.append("- **over WebSocket" + (" and TLS 1.3 (wss://)" if wss else "") + "**: every connection, the push backend's too "
             "(`--transport ws" + (" --tls --ca CERT" if wss else "") + "`) sends the HTTP/1.1 upgrade "
             "(path `/tether`, subprotocol `tether`, `mqtt` or none for NATS), checks the 101, then "
             "writes each message as one masked binary frame and unwraps the server's frames; the "
             "upgrade has its own latency and the login latency starts after it. tether's "
             "`[websocket] listen`" + (" with `tls = true`" if wss else "") + ", mosquitto's listener with "
             "`protocol websockets` (its libwebsockets, built into the mosquitto measured here), nats-server's `websocket { }` block"
             + (" with a `tls { }` of its own" if wss else " with `no_tls: true`")
             + (", every server holding one self-signed P-256 certificate made by the script with openssl" if wss else ""))
    L.append("- tether: `tether --config tether-ws.toml --listen 127.0.0.1:PORT+500 --shards 0 --drain-ms 500 --log warn` "
             "(one shard per CPU; the file's `[websocket]` puts the WebSocket listener on PORT); mosquitto and "
             "nats-server with the configurations in `loadgen/scripts/compare.sh` (persistence and logging off, "
             "limits raised; each also has its plain listener, unused, on PORT+500)\n")
elif read("tls") == "1":
    L.append("- **over TLS 1.3**: every connection (`--tls --ca CERT`, rustls with ring in the loadgen) to "
             "servers holding one self-signed P-256 certificate made by the script with openssl; tether's "
             "`[tls] listen` listener (ALPN `tether`), mosquitto's `listener` with `certfile`/`keyfile`, "
             "nats-server's `tls { cert_file, key_file }` (its clients start TLS after the plaintext INFO); "
             "login latency includes the handshake")
    L.append("- tether: `tether --config tether-tls.toml --listen 127.0.0.1:PORT+500 --shards 0 --drain-ms 500 --log warn` "
             "(one shard per CPU; the file's `[tls]` puts the TLS listener on PORT); mosquitto and nats-server with "
             "the configurations in `loadgen/scripts/compare.sh` (persistence and logging off, limits raised)\n")
else:
    L.append("- tether: `tether --listen 127.0.0.1:PORT --shards 0 --drain-ms 500 --log warn` (one shard per CPU); "
             "echo floor: `loadgen/examples/echo_floor.rs`, one epoll thread per CPU that answers Login and Ping "
             "with canned bytes and nothing else; mosquitto, nats-server and rumqttd with the configurations "
             "in `loadgen/scripts/compare.sh` (persistence and logging off, limits raised)\n")
L.append(table)
L.append("")
upstream_text = ""
if "upstream" in runs_made:
    upstream_text = ("Upstream: every client sends its share of the rate to the app's backend, a sink "
                     "inside the loadgen: with tether a backend connection logged in with the UPSTREAM flag "
                     "that accepts each UpstreamDeliver at once, after which the client gets its "
                     "UpstreamResult; with MQTT a QoS 0 publish to up/<user> and one subscriber of up/#; "
                     "with NATS a PUB to up.<user> and one queue subscriber of up.*. CPU per upstream "
                     "message is the server's CPU during that phase divided by the messages sent; end to "
                     "end is from the client's write to the sink's read (a CLOCK_MONOTONIC stamp in the "
                     "payload); the sink checks that each sender's messages arrive in order (an error "
                     "otherwise). Messages per second are counted over the whole phase with its drain (the "
                     "wait for the last results, or for 50 ms without a message at a peer's subscriber). ")
L.append("How to read it. Memory is the server's RSS growth over the ramp divided by the connections. "
         "CPU per heartbeat is the server's CPU during the idle phase divided by the pongs; per push, "
         "during the push phase divided by the pushes sent. A ratio below 1 means tether costs less "
         "than the best peer on that row (above 1 is better on the connect rate and on messages per "
         "second). tether answers every push "
         "with a result and the client acknowledges it; MQTT at QoS 0 and NATS do neither, so tether's push "
         "does more work. " + upstream_text + "A figure the counter cannot resolve is not printed as a number: /proc CPU times "
         "move in 10 ms ticks, sockstat's TCP memory in per-CPU batches of up to 1 MiB.")

# --profile: where each server's CPU per heartbeat goes, from the perf samples of the same run.
def ring_counters(label, run, end):
    totals = {}
    for line in read(f"{label}.{run}.ring-{end}").splitlines():
        name, _, value = line.rpartition(" ")
        name = name.split("{")[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return totals

profiled = [run for run in ("spread", "burst")
            if any(os.path.exists(os.path.join(work, f"{l}.{run}.perf")) for l, _ in columns)]
if profiled:
    sys.path.insert(0, os.path.join("loadgen", "scripts"))
    import cpu_split
    for run in profiled:
        split_of, cpu_of = {}, {}
        for label, _ in columns:
            path = os.path.join(work, f"{label}.{run}.perf")
            r = report(label, run)
            if os.path.exists(path) and r and r.get("server") and r["server"]["cpu_us_per_heartbeat"]:
                try:
                    split_of[label] = cpu_split.split(path)
                except Exception as e:  # perf missing or the file unreadable
                    print(f"compare.sh: cannot split {path}: {e}", file=sys.stderr)
                    continue
                cpu_of[label] = r["server"]["cpu_us_per_heartbeat"]
        shown = [(l, k) for l, k in columns if l in split_of]
        if not shown:
            continue
        head = [f"where the CPU per heartbeat goes, {run}"] + [title(l, k) for l, k in shown]
        t = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in cpu_split.BUCKETS:
            cells = []
            for l, _ in shown:
                share = split_of[l]["shares"][b]
                cells.append(f"{share * cpu_of[l]:.1f} µs ({100 * share:.0f} %)")
            t.append(f"| {b} | " + " | ".join(cells) + " |")
        kernel = {l: (1 - split_of[l]["shares"]["own code"]) * cpu_of[l] for l, _ in shown}
        t.append("| all but own code | " + " | ".join(f"{kernel[l]:.1f} µs" for l, _ in shown) + " |")
        best = min(((cpu_of[l], l) for l, k in shown if k == "peer"), default=None)
        if best:
            cells = []
            for l, k in shown:
                cells.append(f"{kernel[l] / best[0]:.2f}× ({title(best[1], 'peer')})" if k == "tether" else "n/a")
            t.append("| all but own code ÷ the best peer's whole CPU per heartbeat | " + " | ".join(cells) + " |")
        t.append("| perf samples | " + " | ".join(str(split_of[l]["samples"]) for l, _ in shown) + " |")
        for counter, what in (("tether_ring_waits_total", "io_uring waits (`tether_ring_waits_total`) per heartbeat"),
                              ("tether_ring_completions_total", "io_uring completions per heartbeat"),
                              ("tether_ring_submitted_total", "io_uring submissions per heartbeat")):
            cells, any_value = [], False
            for l, k in shown:
                a, z = ring_counters(l, run, "start"), ring_counters(l, run, "end")
                beats = z.get("tether_heartbeats_total", 0) - a.get("tether_heartbeats_total", 0)
                if k == "tether" and counter in z and counter in a and beats > 0:
                    cells.append(f"{(z[counter] - a[counter]) / beats:.2f}")
                    any_value = True
                else:
                    cells.append("n/a")
            if any_value:
                t.append(f"| {what} | " + " | ".join(cells) + " |")
        L.append("")
        L.extend(t)
    L.append("")
    L.append("How to read the profiles. `perf record -F 999 -g` of the server's threads during the idle "
             "phase of the same run (`loadgen/scripts/profile-load.sh` under `tether-loadgen --during-load`), "
             "each sample put in one kind by its kernel call chain (`loadgen/scripts/cpu_split.py`): own code, "
             "the server's binary and libraries; delivery, softirq work done in the server's context, which "
             "on loopback is putting the reply into the client's socket, waking the client and taking its ACK "
             "back (on a network the client's machine does most of it); send and receive, the socket calls "
             "without that; sleep, sleeping and waking; kernel, the rest (system call entry, io_uring's or "
             "epoll's bookkeeping). µs are the share times the run's CPU per heartbeat; with N samples a share p "
             "is known to about √(p(1−p)/N). The ring counters are tether's metrics at the phase's start and end.")
if notes:
    L.append("")
    L.extend(notes)
body = "\n".join(L)
print(body)

if dest != "-":
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = begin + "\n" + body + "\n" + end + "\n"
    try:
        old = open(dest).read()
    except FileNotFoundError:
        old = "# Benchmarks\n"
    if begin in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[:old.index(begin)] + block + ("\n" + rest if rest else "")
    else:
        if read("ws") == "1":
            heading = "Side by side with mosquitto and nats-server, over WebSocket" + (
                " and TLS" if read("tls") == "1" else "")
        elif read("tls") == "1":
            heading = "Side by side with mosquitto and nats-server, over TLS"
        else:
            heading = "Side by side with mosquitto, nats-server and rumqttd"
        new = old.rstrip("\n") + "\n\n## " + heading + "\n\n" + block
    with open(dest, "w") as f:
        f.write(new)
    print(f"\nwrote {dest}", file=sys.stderr)
PY
