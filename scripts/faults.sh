#!/usr/bin/env bash
# The long versions of sluice's fault tests (CI runs the short ones through scripts/test.sh):
#
#   crash_kill_under_load  20 SIGKILLs at random moments under continuous load, then: nothing
#                          acknowledged is lost; duplicates counted
#   restart_big_queue      100,000 queued messages, killed, restarted: all delivered; start-up
#                          time and memory reported
#   soak                   30 minutes of mixed load with the upstream flapping: nothing lost,
#                          open files and memory flat
#   upstream_faults        4xx from the upstream for 60 s (and its other faults)
#   io_fault, disk_full, write_order   as in CI, io_fault with 200 messages
#
#   scripts/faults.sh             the long run (about 1 to 1.5 hours on 2 cores)
#   scripts/faults.sh --quick     a shorter one (8 kills, 10,000 messages, 2-minute soak; ~10 minutes)
#   scripts/faults.sh --release   build sluice with the release profile (realistic start-up time)
#   scripts/faults.sh --only NAME run one scenario (a test file name above); repeatable
#
# Everything runs on 127.0.0.1, each scenario under a time limit; all temporary files (spools,
# logs, the disk-full test's tmpfs mount) live in one directory that is removed at the end, also
# after a failure or Ctrl-C. Set KEEP=1 to keep it for a post-mortem. Needs root like CI (the
# disk-full test mounts a tmpfs), and the test peers (installed through scripts/test.sh).
# The figures of every scenario are summed up at the end; the whole output is in $FAULTS_LOG
# (default target/faults.log). SLUICE_FAULTS_SEED replays the random choices of a run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=long
PROFILE=()
ONLY=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --release) PROFILE=(--release) ;;
        --only) ONLY+=("$2"); shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "scripts/faults.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$MODE" = quick ]; then
    export SLUICE_FAULTS_KILLS=8 SLUICE_FAULTS_QUEUE=10000 SLUICE_SOAK_SECS=120
    export SLUICE_FAULTS_TEMPFAIL_SECS=10 SLUICE_FAULTS_FIU_MESSAGES=60
else
    export SLUICE_FAULTS_KILLS=20 SLUICE_FAULTS_QUEUE=100000 SLUICE_SOAK_SECS=1800
    export SLUICE_FAULTS_TEMPFAIL_SECS=60 SLUICE_FAULTS_FIU_MESSAGES=200
fi

# scenario, time limit in seconds
SCENARIOS=(
    "write_order 300"
    "io_fault 600"
    "disk_full 600"
    "upstream_faults 900"
    "crash_kill_under_load 1800"
    "restart_big_queue 7200"
    "soak $((SLUICE_SOAK_SECS + 1200))"
)

FAULTS_LOG="${FAULTS_LOG:-target/faults.log}"
mkdir -p "$(dirname "$FAULTS_LOG")"
: >"$FAULTS_LOG"

# One private temporary directory for everything the tests create.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-faults.XXXXXX")"
RUNNING=""
cleanup() {
    local status=$?
    if [ -n "$RUNNING" ] && kill -0 "$RUNNING" 2>/dev/null; then
        # `timeout` leads its own process group: the test binary, sluice and the peers.
        kill -TERM -- "-$RUNNING" 2>/dev/null || kill -TERM "$RUNNING" 2>/dev/null || true
        sleep 2
        kill -KILL -- "-$RUNNING" 2>/dev/null || true
    fi
    # A killed disk-full test leaves its tmpfs mounted: unmount what lies under $WORK.
    if [ -r /proc/mounts ]; then
        awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "scripts/faults.sh: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/test.sh --install-only

echo "scripts/faults.sh: building the tests ($MODE run${PROFILE:+, release profile})" | tee -a "$FAULTS_LOG"
cargo test -p sluice --locked "${PROFILE[@]}" --no-run 2>&1 | tail -3 | tee -a "$FAULTS_LOG"

failed=()
for entry in "${SCENARIOS[@]}"; do
    read -r name limit <<<"$entry"
    if [ ${#ONLY[@]} -gt 0 ] && [[ ! " ${ONLY[*]} " =~ " $name " ]]; then
        continue
    fi
    echo "=== $name (limit ${limit}s) ===" | tee -a "$FAULTS_LOG"
    started=$(date +%s)
    set +e
    TMPDIR="$WORK" timeout -k 30 "$limit" \
        cargo test -p sluice --locked "${PROFILE[@]}" --test "$name" -- --nocapture \
        >>"$FAULTS_LOG" 2>&1 &
    RUNNING=$!
    wait "$RUNNING"
    status=$?
    RUNNING=""
    set -e
    took=$(( $(date +%s) - started ))
    if [ "$status" = 0 ]; then
        echo "    passed in ${took}s" | tee -a "$FAULTS_LOG"
    else
        [ "$status" = 124 ] && echo "    TIME LIMIT of ${limit}s reached" | tee -a "$FAULTS_LOG"
        echo "    FAILED (exit $status) after ${took}s: see $FAULTS_LOG" | tee -a "$FAULTS_LOG"
        failed+=("$name")
    fi
done

echo
echo "=== figures ==="
grep -E '^(kill under load|kill [0-9]+/|restart with a big queue|soak:|disk full|nearly full|fsync/open failures|random fsync failures|write order|[a-z0-9-]+ ×[0-9]+)' \
    "$FAULTS_LOG" | grep -v 'random seed' || true
grep -E 'random seed' "$FAULTS_LOG" || true
echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "scripts/faults.sh: FAILED: ${failed[*]} (output: $FAULTS_LOG)"
    exit 1
fi
echo "scripts/faults.sh: all scenarios passed (output: $FAULTS_LOG)"
