#!/usr/bin/env bash
# Benchmarks. Usage: bench/run.sh sqlite-dir [ROWS]
#
# sqlite-dir: a ROWS-row (default 1,000,000) SQLite subsidy-payment table (the demo's,
# ~10 columns) plus the 5,000-entry snapshot ledger, one full pass into the dir sink with
# synchronous=FULL, gzip and signatures, measured end to end (wall clock, peak RSS).
# The last line is: bench sqlite-dir: <N> records/s, peak RSS <M> MiB
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-sqlite-dir}
rows=${2:-1000000}
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

cargo build --release --locked --quiet
bin=target/release/fepd
work=${BENCH_DIR:-target/bench}

case "$what" in
sqlite-dir)
    dir="$work/sqlite-dir-$rows"
    if [ ! -f "$dir/legacy.db" ]; then
        echo "generating $rows rows in $dir/legacy.db (once)"
        rm -rf "$dir"
        "$bin" demo --dir "$dir" --rows "$rows" >/dev/null
    fi
    rm -rf "$dir/state" "$dir/outbox"
    out=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$out.time" "$bin" --config "$dir/fepd.toml" --log warn run --once | tee "$out"
    read -r seconds rss_kb < "$out.time"
    records=$(grep -oE '[0-9]+ record\(s\) delivered' "$out" | grep -oE '^[0-9]+')
    "$bin" verify "$dir/outbox" --pubkey "$("$bin" --config "$dir/fepd.toml" check | sed -n 's/.*public key //p')" | tail -1
    awk -v n="$records" -v s="$seconds" -v k="$rss_kb" \
        'BEGIN { printf "bench sqlite-dir: %d records/s, peak RSS %.0f MiB (%d records in %.2f s)\n", n / s, k / 1024, n, s }'
    ;;
*)
    echo "unknown benchmark $what (known: sqlite-dir)" >&2; exit 2 ;;
esac
