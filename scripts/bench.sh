#!/usr/bin/env bash
# sluice against Postfix, in one run, on this machine: Postfix's smtp-source sends into each relay in turn,
# both relays forward to the same smtp-sink, and every case prints messages/s accepted and end to end,
# CPU seconds per 1,000 messages, peak memory, and the ratio sluice/Postfix. Then accept latency at 50
# clients (a Python client that times every transaction) and the memory of 10,000 idle sessions.
#
#   scripts/bench.sh                 the full run (about 5 minutes on a quiet 2-core machine, up to 10
#                                    when other jobs compete for the CPU)
#   scripts/bench.sh --quick         small counts, a smoke test (one to two minutes)
#   scripts/bench.sh --install       apt-get install postfix first if smtp-source/smtp-sink are missing
#   scripts/bench.sh --sluice PATH   use this sluice binary instead of `cargo build --release -p sluice`
#                   [--label TEXT]   (and say in the results which source it was built from)
#   scripts/bench.sh --repeat N      run every case N times (default 2, --quick 1), alternating which
#                                    relay goes first; the report keeps each relay's best run
#   scripts/bench.sh --keep          keep the work directory (spools, Postfix queue, logs) afterwards
#   scripts/bench.sh --only LIST     only these cases (comma-separated labels from CASES in this script,
#                                    and "latency", "paced", "idle")
#
# Needs: root (Postfix's master only starts as root), Linux /proc, Python 3.8+ (standard library only),
# Postfix 3.x installed (for smtp-source, smtp-sink and the relay itself; `apt-get install postfix`,
# "No configuration" is enough: this script never touches /etc/postfix or port 25).
# Everything runs on 127.0.0.1 on free ports; the spools live in a fresh directory under
# $SLUICE_BENCH_TMPDIR (default /var/tmp, which must be a real disk: on tmpfs fsync costs nothing and the
# run says it does not count). Results go to target/bench/<time>/ (results.md, results.jsonl; logs of failed cases).
#
# Durability is on for both relays in every case: sluice fsyncs body, record and queue directory before
# every 250 (it has no switch to turn that off); Postfix runs with its default durable queue (cleanup
# fsyncs the queue file before smtpd answers 250). Both log as in production: sluice at info
# (SLUICE_BENCH_RUST_LOG to change), Postfix through postlogd (maillog_file), each to its own file.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
HELPER="$REPO/scripts/bench/bench.py"
PY="${BENCH_PYTHON:-python3}"
COMMAND_LINE="scripts/bench.sh$(printf ' %q' "$@")"

QUICK=0 INSTALL=0 KEEP=0 SLUICE_BIN="" ONLY="" REPEAT="" LABEL=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --install) INSTALL=1 ;;
    --keep) KEEP=1 ;;
    --sluice) SLUICE_BIN="$2"; shift ;;
    --only) ONLY=",$2,"; shift ;;
    --repeat) REPEAT="$2"; shift ;;
    --label) LABEL="$2"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '%s\n' "$*" >&2; }
die() { log "bench.sh: $*"; exit 1; }

# label | title | messages (full) | messages (--quick) | clients | payload bytes | recipients per message
CASES=(
    "4k-1|4 KiB × 1 client|1500|200|1|4096|1"
    "4k-10|4 KiB × 10 clients|3000|500|10|4096|1"
    "4k-50|4 KiB × 50 clients|3000|500|50|4096|1"
    "100k-10|100 KiB × 10 clients|1500|200|10|102400|1"
    "rcpt10-10|4 KiB × 10 recipients × 10 clients|1500|300|10|4096|10"
    "1m-4|1 MiB × 4 clients|200|40|4|1048576|1"
)
# Accept latency at 50 clients (Python client): flat out, and paced at a fixed total rate.
LATENCY_CLIENTS=50
LATENCY_PER_CLIENT=$((QUICK ? 10 : 50))
PACED_RATE="${PACED_RATE:-150}" # well below what either relay sustains on 2 cores, even a busy 2 cores
PACED_SECONDS=$((QUICK ? 3 : 10))
IDLE_SESSIONS=$((QUICK ? 1000 : 10000))
REPEAT="${REPEAT:-$((QUICK ? 1 : 2))}"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --repeat needs a positive number" >&2; exit 2; }

wanted() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------------------
# Tools: nothing is installed unless --install says so.

find_tool() {
    local t
    for t in "/usr/sbin/$1" "/usr/bin/$1" "$(command -v "$1" 2>/dev/null || true)"; do
        [ -n "$t" ] && [ -x "$t" ] && { echo "$t"; return 0; }
    done
    return 1
}

missing_tools() {
    local m=()
    for t in smtp-source smtp-sink postfix postconf; do find_tool "$t" >/dev/null || m+=("$t"); done
    echo "${m[@]}"
}

install_postfix() {
    [ "$(id -u)" = 0 ] || die "--install needs root"
    export DEBIAN_FRONTEND=noninteractive
    # Unconfigured: no /etc/postfix/main.cf, nothing started, nothing bound to port 25.
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# installed by scripts/bench.sh during its apt-get install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    local ok=0
    apt-get -o DPkg::Lock::Timeout=300 update &&
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends postfix && ok=1
    [ "$created" = 1 ] && rm -f "$policy"
    [ "$ok" = 1 ] || die "apt-get install postfix failed"
}

MISSING="$(missing_tools)"
if [ -n "$MISSING" ]; then
    if [ "$INSTALL" = 1 ]; then
        log "bench.sh: installing postfix (missing: $MISSING)"
        install_postfix
        MISSING="$(missing_tools)"
        [ -z "$MISSING" ] || die "still missing after the install: $MISSING"
    else
        log "bench.sh: missing: $MISSING (from Postfix)."
        log "  install with: apt-get install --no-install-recommends postfix   (choose \"No configuration\")"
        log "  or run: scripts/bench.sh --install"
        exit 2
    fi
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null ||
    die "needs Python 3.8 or later as '$PY' (set BENCH_PYTHON)"
[ "$(id -u)" = 0 ] || die "run as root: Postfix's master only starts as root (smtp-sink then drops to nobody)"
[ -r /proc/self/task/$$/children ] || [ -r "/proc/$$/task/$$/children" ] ||
    die "needs /proc/PID/task/TID/children (Linux with CONFIG_PROC_CHILDREN)"
SMTP_SOURCE="$(find_tool smtp-source)"
SMTP_SINK="$(find_tool smtp-sink)"
POSTFIX="$(find_tool postfix)"
POSTCONF="$(find_tool postconf)"

# ---------------------------------------------------------------------------------------------------
# sluice

if [ -z "$SLUICE_BIN" ]; then
    LABEL="${LABEL:-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?') (this tree)}"
    log "bench.sh: cargo build --release -p sluice"
    cargo build --release -p sluice >&2
    TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    SLUICE_BIN="$TARGET_DIR/release/sluice"
fi
[ -x "$SLUICE_BIN" ] || die "no sluice binary at $SLUICE_BIN"
SLUICE_BIN="$(cd "$(dirname "$SLUICE_BIN")" && pwd)/$(basename "$SLUICE_BIN")"

# 10,000 idle sessions need 10,000 descriptors in sluice and in the client.
HARD="$(ulimit -Hn)"
if [ "$HARD" != unlimited ] && [ "$HARD" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_SESSIONS + 1000)) ]; then
    log "bench.sh: warning: open-file limit $(ulimit -n) is below $((IDLE_SESSIONS + 1000)); the idle case may fail"
fi

# ---------------------------------------------------------------------------------------------------
# Work directory, results, and cleanup of everything started here (also on Ctrl-C).

TMPBASE="${SLUICE_BENCH_TMPDIR:-/var/tmp}"
WORK="$(mktemp -d "$TMPBASE/sluice-bench.XXXXXX")"
chmod 755 "$WORK" # Postfix daemons (user postfix) must reach their queue directory below it
RESULTS="$REPO/target/bench/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"
RESULTS_JSON="$RESULTS/results.jsonl"
: >"$RESULTS_JSON"

SINK_PID="" SLUICE_PID="" PF_CONF="" FG_PID="" FAILURES=0

# Runs a command in the background and waits for it: a trapped Ctrl-C interrupts `wait` at once, whereas
# bash skips its INT trap when a foreground child catches SIGINT itself (postfix-script does).
fg() {
    "$@" &
    FG_PID=$!
    local rc=0
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

stop_pid() { # pid, seconds to wait after SIGTERM before SIGKILL
    local pid="$1" wait_s="${2:-10}" i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "bench.sh: pid $pid did not stop on SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

postfix_master_pid() { [ -r "$1/queue/pid/master.pid" ] && tr -d ' \n' <"$1/queue/pid/master.pid" || true; }

stop_postfix() {
    [ -n "$PF_CONF" ] || return 0
    local dir pid i
    dir="$(dirname "$PF_CONF")"
    pid="$(postfix_master_pid "$dir")"
    "$POSTFIX" -c "$PF_CONF" stop >/dev/null 2>&1 || true
    for ((i = 0; i < 150; i++)); do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "bench.sh: Postfix master $pid still running; postfix abort"
        "$POSTFIX" -c "$PF_CONF" abort >/dev/null 2>&1 || true
        sleep 1
    fi
    # Whatever is left of this instance (say a start cut short by Ctrl-C): its processes, and only
    # its, carry MAIL_CONFIG=<its config directory>.
    for pid in $("$PY" "$HELPER" pids-by-env "MAIL_CONFIG=$PF_CONF"); do
        log "bench.sh: killing leftover Postfix process $pid"
        kill -KILL "$pid" 2>/dev/null || true
    done
    PF_CONF=""
}

cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
    stop_pid "$FG_PID" 10
    stop_pid "$SLUICE_PID" 35
    SLUICE_PID=""
    stop_postfix
    stop_pid "$SINK_PID" 5
    if [ "$KEEP" = 1 ] || [ "$FAILURES" -gt 0 ]; then
        log "bench.sh: work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "bench.sh: interrupted"; exit 130' INT
trap 'exit 143' TERM

freeport() { "$PY" "$HELPER" freeport; }

# ---------------------------------------------------------------------------------------------------
# The sink: one smtp-sink for the whole run; `-c` keeps a running "mesg=N" counter in sink.out.

SINK_PORT="$(freeport)"
"$SMTP_SINK" -u nobody -c 127.0.0.1:"$SINK_PORT" 1024 >"$WORK/sink.out" 2>"$WORK/sink.err" &
SINK_PID=$!
"$PY" "$HELPER" wait-smtp "$SINK_PORT" 10 || die "smtp-sink did not start: $(cat "$WORK/sink.err")"

# ---------------------------------------------------------------------------------------------------
# The relays. start_* set RELAY_PORT, RELAY_PID, QUEUE_KIND, QUEUE_DIR, RELAY_LOG.

# Equivalent to the Postfix below: no per-client connection cap that 50 clients (or 10,000 idle
# sessions) from 127.0.0.1 would hit; everything else at its default.
start_sluice() { # name, max_connections (also per client)
    local dir="$WORK/sluice-$1"
    mkdir -p "$dir"
    RELAY_PORT="$(freeport)"
    cat >"$dir/sluice.toml" <<EOF
hostname = "relay.bench.test"
spool_dir = "$dir/spool"

[[listener]]
address = "127.0.0.1:$RELAY_PORT"
allowed_networks = ["127.0.0.0/8"]
max_connections = $2
max_connections_per_client = $2
max_recipients = 100

[upstream]
host = "127.0.0.1"
port = $SINK_PORT
tls = "none"
connections = 8
max_messages_per_connection = 1000

[retry]
initial_interval = "1s"
max_interval = "10s"
EOF
    RELAY_LOG="$dir/sluice.log"
    RUST_LOG="${SLUICE_BENCH_RUST_LOG:-info}" "$SLUICE_BIN" serve --config "$dir/sluice.toml" 2>"$RELAY_LOG" &
    SLUICE_PID=$!
    RELAY_PID=$SLUICE_PID
    QUEUE_KIND=sluice
    QUEUE_DIR="$dir/spool"
    "$PY" "$HELPER" wait-smtp "$RELAY_PORT" 30 || { tail -20 "$RELAY_LOG" >&2; die "sluice did not start"; }
}

stop_sluice() {
    stop_pid "$SLUICE_PID" 35
    SLUICE_PID=""
}

start_postfix() { # name
    local dir="$WORK/postfix-$1"
    mkdir -p "$dir/conf" "$dir/queue" "$dir/data"
    chown postfix "$dir/data"
    RELAY_PORT="$(freeport)"
    # An equivalent relay: accept from 127.0.0.0/8, relay everything to the sink, durable queue as
    # shipped, no TLS (like sluice's tls = "none"), no local delivery, no DNS, no reverse lookups of the
    # client (sluice does none), no throttling of 50 clients from one address.
    cat >"$dir/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
maillog_file = $dir/maillog
myhostname = relay.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
in_flow_delay = 0
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtp_destination_concurrency_limit = 20
smtpd_recipient_limit = 100
biff = no
EOF
    cat >"$dir/conf/master.cf" <<EOF
127.0.0.1:$RELAY_PORT inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
    PF_CONF="$dir/conf"
    RELAY_LOG="$dir/maillog"
    fg "$POSTFIX" -c "$PF_CONF" start >&2 || { cat "$RELAY_LOG" >&2 2>/dev/null; die "Postfix did not start"; }
    local i
    RELAY_PID=""
    for ((i = 0; i < 100; i++)); do
        RELAY_PID="$(postfix_master_pid "$dir")"
        [ -n "$RELAY_PID" ] && break
        sleep 0.1
    done
    [ -n "$RELAY_PID" ] || die "no Postfix master pid in $dir/queue/pid/master.pid"
    QUEUE_KIND=postfix
    QUEUE_DIR="$dir/queue"
    "$PY" "$HELPER" wait-smtp "$RELAY_PORT" 30 || { tail -20 "$RELAY_LOG" >&2; die "Postfix smtpd did not answer"; }
}

stop_relay() { # relay
    if [ "$1" = sluice ]; then stop_sluice; else stop_postfix; fi
}

# What a failed case leaves for the report: the relay's log and the state of its queue.
keep_evidence() { # relay, label, run
    local dest="$RESULTS/failed-$2-$1-run${3:-1}"
    mkdir -p "$dest"
    cp "$RELAY_LOG" "$dest/" 2>/dev/null || true
    cp "$WORK/$2.$1.${3:-1}.load.err" "$WORK/$2.$1.${3:-1}.load.out" "$dest/" 2>/dev/null || true
    {
        echo "# queue directory $QUEUE_DIR after the case"
        find "$QUEUE_DIR" -maxdepth 3 -type d -printf '%p: ' -exec sh -c 'ls "$1" | wc -l' _ {} \; 2>/dev/null
        echo "# first entries"
        find "$QUEUE_DIR" -type f 2>/dev/null | head -20
    } >"$dest/queue-state.txt"
    if [ "$1" = sluice ]; then
        local rec
        rec="$(find "$QUEUE_DIR/queue" -name '*.json' 2>/dev/null | head -1)"
        [ -n "$rec" ] && cp "$rec" "$dest/sample-record.json"
    fi
    log "           evidence kept in $dest"
}

run_case() { # relay label title expect latency_file run load command...
    local relay="$1" label="$2" title="$3" expect="$4" latfile="$5" run="$6"
    shift 6
    sync # earlier runs' dirty pages must not land in this run's fsyncs
    fg "$PY" "$HELPER" case --label "$label" --title "$title" --relay "$relay" --pid "$RELAY_PID" \
        --queue-kind "$QUEUE_KIND" --queue-dir "$QUEUE_DIR" --sink-out "$WORK/sink.out" --sink-pid "$SINK_PID" \
        --expect "$expect" --results "$RESULTS_JSON" --workdir "$WORK" ${latfile:+--latency-file "$latfile"} \
        --run "$run" -- "$@" || {
        FAILURES=$((FAILURES + 1))
        keep_evidence "$relay" "$label" "$run"
    }
}

# ---------------------------------------------------------------------------------------------------
# Run

FSTYPE="$(findmnt -n -o FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")"
TMPFS_NOTE="" JOURNAL=""
case "$FSTYPE" in
ext3 | ext4) # fsync costs differ a lot with and without a journal (jbd2)
    SPOOL_DEV="$(basename "$(findmnt -n -o SOURCE -T "$WORK" 2>/dev/null || echo '?')")"
    if ls /proc/fs/jbd2 2>/dev/null | grep -q "^$SPOOL_DEV-"; then JOURNAL=" (journaled)"; else JOURNAL=" (no journal)"; fi
    ;;
esac
[ "$FSTYPE" = tmpfs ] && TMPFS_NOTE=" — BUT THE SPOOLS WERE ON TMPFS, WHERE FSYNC IS FREE: THIS RUN DOES NOT COUNT"
log ""
log "sluice $SLUICE_BIN; Postfix $("$POSTCONF" -d -h mail_version 2>/dev/null); sink 127.0.0.1:$SINK_PORT"
log "work directory $WORK ($FSTYPE); results in $RESULTS"
[ "$FSTYPE" = tmpfs ] && log "WARNING: the spools are on tmpfs: fsync is free there, these results do not count"
[ "$QUICK" = 1 ] && log "--quick: small counts, a smoke test; the numbers are not meant to be quoted"
T_START=$(date +%s)
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

relays_for_run() { # run: odd runs start with sluice, even runs with Postfix
    if [ $(($1 % 2)) = 1 ]; then echo sluice postfix; else echo postfix sluice; fi
}

start_relay() { # relay, name
    if [ "$1" = sluice ]; then start_sluice "$2" 1000; else start_postfix "$2"; fi
}

for spec in "${CASES[@]}"; do
    IFS='|' read -r label title full quick clients size rcpts <<<"$spec"
    wanted "$label" || continue
    n=$((QUICK ? quick : full))
    log ""
    log "== $title: $n messages of $size bytes, $rcpts recipient(s), smtp-source -d -s $clients"
    for ((run = 1; run <= REPEAT; run++)); do
        for relay in $(relays_for_run "$run"); do
            start_relay "$relay" "$label-$run"
            run_case "$relay" "$label" "$title" "$n" "" "$run" \
                "$SMTP_SOURCE" -d -s "$clients" -m "$n" -l "$size" -r "$rcpts" -M client.bench.test \
                -f bench@client.bench.test -t rcpt@example.net 127.0.0.1:"$RELAY_PORT"
            stop_relay "$relay"
        done
    done
done

latency_case() { # label, title, messages per client, rate (0: flat out)
    local label="$1" title="$2" per_client="$3" rate="$4" run relay
    for ((run = 1; run <= REPEAT; run++)); do
        for relay in $(relays_for_run "$run"); do
            start_relay "$relay" "$label-$run"
            run_case "$relay" "$label" "$title" $((LATENCY_CLIENTS * per_client)) \
                "$WORK/$label-$relay-$run.json" "$run" \
                "$PY" "$HELPER" latency-client --port "$RELAY_PORT" --clients "$LATENCY_CLIENTS" \
                --messages "$per_client" --size 4096 --rate "$rate" --out "$WORK/$label-$relay-$run.json"
            stop_relay "$relay"
        done
    done
}

if wanted latency; then
    log ""
    log "== accept latency, flat out: $LATENCY_CLIENTS clients × $LATENCY_PER_CLIENT messages of 4 KiB" \
        "(Python client, one transaction at a time per connection, timed from MAIL to the 250 after the data)"
    latency_case latency "4 KiB × 50 clients, flat out" "$LATENCY_PER_CLIENT" 0
fi

if wanted paced; then
    per_client=$((PACED_RATE * PACED_SECONDS / LATENCY_CLIENTS))
    log ""
    log "== accept latency, paced: $LATENCY_CLIENTS clients sending $PACED_RATE messages/s in all," \
        "$per_client each, 4 KiB"
    latency_case paced "4 KiB × 50 clients, $PACED_RATE msg/s offered" "$per_client" "$PACED_RATE"
fi

if wanted idle; then
    log ""
    log "== $IDLE_SESSIONS idle sessions against sluice (connect, read the greeting, stay silent)"
    start_sluice idle 20000
    fg "$PY" "$HELPER" idle --port "$RELAY_PORT" --pid "$RELAY_PID" --sessions "$IDLE_SESSIONS" \
        --results "$RESULTS_JSON" || { FAILURES=$((FAILURES + 1)); keep_evidence sluice idle 1; }
    stop_sluice
fi

T_END=$(date +%s)
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------------
# Report

{
    echo "## Results $(date -u '+%Y-%m-%d %H:%M UTC')"
    [ "$QUICK" = 1 ] && echo "" && echo "**--quick run: small counts, not for quoting.**"
    echo ""
    echo "Command: \`$COMMAND_LINE\` (wall time $((T_END - T_START)) s)"
    echo ""
    echo "- Machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)," \
        "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
    echo "- Load average (1, 5, 15 min) at the start $LOAD_START, at the end $LOAD_END;" \
        "\"other load\" below is CPU used by everything else on the machine during a case, in cores"
    echo "- Spools: $FSTYPE$JOURNAL on $(findmnt -n -o SOURCE -T "$WORK" 2>/dev/null || echo '?')" \
        "($(findmnt -n -o OPTIONS -T "$WORK" 2>/dev/null || echo '?'))"
    echo "- $("$SLUICE_BIN" --version 2>/dev/null || echo sluice), ${LABEL:-binary $SLUICE_BIN}" \
        "(release build); Postfix $("$POSTCONF" -d -h mail_version 2>/dev/null); smtp-source -d (one connection" \
        "per client, many messages each) into the relay, relay into one smtp-sink"
    echo "- Durability: on for both (sluice: fsync of body, record and queue directory before every 250;" \
        "Postfix: default durable queue)$TMPFS_NOTE"
    echo ""
    "$PY" "$HELPER" report "$RESULTS_JSON"
} >"$RESULTS/results.md"

log ""
cat "$RESULTS/results.md"
log ""
log "bench.sh: results in $RESULTS/results.md"
[ "$FAILURES" = 0 ] || { log "bench.sh: $FAILURES case(s) failed; see above and $RESULTS/failed-*"; exit 1; }
