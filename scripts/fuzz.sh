#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) on the stable toolchain.
#
#   scripts/fuzz.sh                  every target, 10 minutes each (the longer run, by hand)
#   scripts/fuzz.sh --ci             every target, 20 seconds each (what .ci/run does after the tests)
#   scripts/fuzz.sh [--ci] TARGET... only these targets
#   FUZZ_SECONDS=3600 scripts/fuzz.sh session    choose the time per target
#
# Targets: `session` (crates/sluice/fuzz: a whole SMTP session, bytes in, replies out, with the
# invariants it asserts: well-formed replies of at most 512 octets a line, never an open relay, and
# no hang once the input ends) and `command`, `reply`, `data` (crates/smtp-wire/fuzz: the parsers,
# the DATA receiver and dot-stuffing).
#
# Sanitizers are off (`-s none`): AddressSanitizer needs a nightly toolchain, and this is Rust code
# without `unsafe` of its own; what the fuzzer looks for is panics, hangs and broken invariants.
# cargo-fuzz is installed from crates.io when missing (`cargo install --locked cargo-fuzz`, a few
# minutes). Corpora grow in crates/<crate>/fuzz/corpus/<target>/ (not committed), seeded from
# crates/<crate>/fuzz/seeds/<target>/ where present. A failure leaves its input in
# crates/<crate>/fuzz/artifacts/<target>/; reproduce it with
#   cd crates/<crate>/fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

seconds="${FUZZ_SECONDS:-600}"
if [ "${1:-}" = "--ci" ]; then
    seconds="${FUZZ_SECONDS:-20}"
    shift
fi

# target → the fuzz package that has it
declare -A package=(
    [session]=crates/sluice/fuzz
    [command]=crates/smtp-wire/fuzz
    [reply]=crates/smtp-wire/fuzz
    [data]=crates/smtp-wire/fuzz
)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(session command reply data)
for t in "${targets[@]}"; do
    [ -n "${package[$t]:-}" ] || { echo "scripts/fuzz.sh: unknown target $t (known: ${!package[*]})" >&2; exit 2; }
done

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

for t in "${targets[@]}"; do
    dir="$root/${package[$t]}"
    target_dir=()
    # Keep fuzz builds apart from the workspace's (they use other compiler flags).
    [ -n "${CARGO_TARGET_DIR:-}" ] && target_dir=(--target-dir "$CARGO_TARGET_DIR/fuzz-$(basename "$(dirname "$dir")")")
    corpus=("corpus/$t")
    mkdir -p "$dir/corpus/$t"
    [ -d "$dir/seeds/$t" ] && corpus+=("seeds/$t")
    echo "scripts/fuzz.sh: $t (${package[$t]}) for ${seconds}s" >&2
    (cd "$dir" && cargo fuzz run -s none "${target_dir[@]}" "$t" "${corpus[@]}" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1)
done
echo "scripts/fuzz.sh: ${#targets[@]} target(s) fuzzed for ${seconds}s each, no failure" >&2
