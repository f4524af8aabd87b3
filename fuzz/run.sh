#!/usr/bin/env bash
# Runs fuzz targets one after another (CPU is shared: one libFuzzer process
# at a time), each for SECONDS (default 600), on the saved corpus, then
# minimizes that corpus in place. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); see docs/fuzzing.md.
#
#   fuzz/run.sh [target...]        (default: every target)
#   SECONDS_PER_TARGET=60 fuzz/run.sh json_command
#
# Each run's libFuzzer log lands in fuzz/logs/<target>.log (gitignored); a
# crash input lands in fuzz/artifacts/<target>/ and the script goes on.
set -uo pipefail
cd "$(dirname "$0")"
secs="${SECONDS_PER_TARGET:-600}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    # -a: debug assertions (and overflow checks) on; -s none: no ASan. Gyre's
    # crates forbid unsafe code, and ASan would halve the executions.
    cargo +nightly fuzz run -a -s none "$t" "corpus/$t" -- \
        -max_total_time="$secs" -jobs=1 -print_final_stats=1 -rss_limit_mb=2048 -timeout=10
    mv -f fuzz-0.log "logs/$t.log" 2>/dev/null || true
    grep -E '^#[0-9]+ *DONE|^Done|stat::number_of_executed_units|deadly signal|panicked' "logs/$t.log" | tail -5
    cargo +nightly fuzz cmin -a -s none "$t" "corpus/$t" > "logs/$t.cmin.log" 2>&1
    echo "   corpus: $(ls "corpus/$t" | wc -l) files, $(du -sk "corpus/$t" | cut -f1) KiB after cmin"
done
