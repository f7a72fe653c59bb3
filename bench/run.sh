#!/usr/bin/env bash
# Benchmarks. Usage: bench/run.sh sqlite-dir|postgres-dir|postgres-amqp [ROWS]
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

pg="psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q"

# The ROWS-row PostgreSQL table shaped like a subsidy payment table (10 columns, about 150
# bytes a row, valid data), created once in database fepd_bench.
ensure_pg_table() {
    $pg -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'fepd_bench'" | grep -q 1 \
        || $pg -d postgres -c "CREATE DATABASE fepd_bench"
    have=$($pg -d fepd_bench -Atc "SELECT count(*) FROM subsidy_payment" 2>/dev/null || echo 0)
    if [ "$have" != "$rows" ]; then
        echo "creating subsidy_payment with $rows rows in database fepd_bench (once)"
        $pg -d fepd_bench <<SQL
DROP TABLE IF EXISTS subsidy_payment;
CREATE FUNCTION pg_temp.idcheck(s text) RETURNS text LANGUAGE sql IMMUTABLE AS \$\$
  SELECT substr('10X98765432', (sum(substr(s, i, 1)::int * (ARRAY[7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2])[i]) % 11)::int + 1, 1)
  FROM generate_series(1, 17) i \$\$;
CREATE TABLE subsidy_payment (
  pay_id bigint PRIMARY KEY, project_code varchar(20) NOT NULL, name varchar(40) NOT NULL,
  id_card char(18) NOT NULL, village_code varchar(12) NOT NULL, bank_account varchar(32),
  amount numeric(14,2) NOT NULL, pay_date date NOT NULL, period varchar(7), updated_at timestamp(6) NOT NULL);
WITH base AS (
  SELECT g, '430124' || to_char(date '1940-01-01' + (g * 7919 % 21900)::int, 'YYYYMMDD') || lpad((g % 1000)::text, 3, '0') AS id17,
         date '2017-01-01' + (g * 13 % 3200)::int AS d
  FROM generate_series(1::bigint, $rows) g)
INSERT INTO subsidy_payment
SELECT g, 'XM' || extract(year FROM d) || '-0' || (g % 8 + 1), (ARRAY['王','李','张','刘','陈'])[g % 5 + 1] || (ARRAY['伟','芳','娜','秀英','建华'])[g % 5 + 1],
       id17 || pg_temp.idcheck(id17), '430124' || (100 + g % 12) || (200 + g % 30), '6217' || lpad((g * 7)::text, 15, '0'),
       ((50 + g % 1950) || '.' || lpad((g % 100)::text, 2, '0'))::numeric, d, to_char(d, 'YYYY-MM'),
       timestamp '2017-01-01 08:00:00' + g * interval '250 milliseconds'
FROM base;
CREATE INDEX subsidy_payment_updated ON subsidy_payment (updated_at, pay_id);
ANALYZE subsidy_payment;
SQL
    fi
}

# timed_run DIR: fepd's full pass with DIR's config, timed by /usr/bin/time; sets
# seconds, rss_kb and records.
timed_run() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$out.time" "$bin" --config "$1/fepd.toml" --log warn run --once | tee "$out"
    read -r seconds rss_kb < "$out.time"
    records=$(grep -oE '[0-9]+ record\(s\) delivered' "$out" | grep -oE '^[0-9]+')
}

# write_pg_agent DIR SINK: a fresh agent in DIR reading the table (5,000-record batches)
# into the [sink] given by its TOML body, with a new signing key (public key in
# DIR/public.key).
write_pg_agent() {
    local dir=$1 sink=$2
    rm -rf "$dir"; mkdir -p "$dir/connectors.d"
    cat > "$dir/fepd.toml" <<TOML
agent_id = "bench"
region_code = "430124"
state_dir = "state"
signing_key = "signing.key"
[sink]
$sink
[spool]
batch_size = 5000
TOML
    write_pg_connector "$dir"
    "$bin" keygen --out "$dir/signing.key" > "$dir/public.key" 2>/dev/null
}

# The connector reading that table.
write_pg_connector() {
    local dir=$1
    cat > "$dir/connectors.d/subsidy.toml" <<TOML
name = "subsidy"
record_type = "individual_subsidy"
[source]
driver = "postgres"
host = "127.0.0.1"
database = "fepd_bench"
user = "postgres"
tls = "disable"
[extract]
table = "subsidy_payment"
key = "pay_id"
mode = "timestamp"
column = "updated_at"
fetch_size = 2000
[fields]
payment_code = "pay_id"
project_code = "project_code"
recipient_name = "name"
id_number = "id_card"
region_code = "village_code"
bank_account = "bank_account"
amount = "amount"
paid_date = "pay_date"
period = "period"
TOML
}

case "$what" in
sqlite-dir)
    dir="$work/sqlite-dir-$rows"
    if [ ! -f "$dir/legacy.db" ]; then
        echo "generating $rows rows in $dir/legacy.db (once)"
        rm -rf "$dir"
        "$bin" demo --dir "$dir" --rows "$rows" >/dev/null
    fi
    rm -rf "$dir/state" "$dir/outbox"
    timed_run "$dir"
    "$bin" verify "$dir/outbox" --pubkey "$("$bin" --config "$dir/fepd.toml" check | sed -n 's/.*public key //p')" | tail -1
    awk -v n="$records" -v s="$seconds" -v k="$rss_kb" \
        'BEGIN { printf "bench sqlite-dir: %d records/s, peak RSS %.0f MiB (%d records in %.2f s)\n", n / s, k / 1024, n, s }'
    ;;
postgres-dir)
    # The PostgreSQL table (ensure_pg_table). Then, in one run: fepd's full pass into the
    # dir sink; COPY (SELECT …) TO STDOUT of the same rows (the
    # physical reading limit); and the peer tool sling moving the table to a JSONL file.
    ensure_pg_table
    dir="$work/postgres-dir"
    write_pg_agent "$dir" 'type = "dir"
path = "outbox"'
    timed_run "$dir"
    "$bin" verify "$dir/outbox" --pubkey "$dir/public.key" | tail -1

    cols="pay_id, project_code, name, id_card, village_code, bank_account, amount, pay_date, period, updated_at"
    start=$(date +%s.%N)
    $pg -d fepd_bench -c "COPY (SELECT $cols FROM subsidy_payment ORDER BY updated_at, pay_id) TO STDOUT" > /dev/null
    copy_s=$(echo "$(date +%s.%N) - $start" | bc)
    echo "copy limit: $rows rows in $copy_s s"

    sling_bin=${SLING_BINARY:-}
    if [ -z "$sling_bin" ]; then
        pip install -q sling sling-linux-amd64 >/dev/null 2>&1 || true
        sling_bin=$(python3 -c 'import os, sling_linux_amd64 as s; print(os.path.join(os.path.dirname(s.__file__), "bin", "sling-linux-amd64"))' 2>/dev/null || true)
    fi
    sling_rate=0
    if [ -n "$sling_bin" ] && [ -x "$sling_bin" ]; then
        rm -f "$dir/sling.jsonl"
        start=$(date +%s.%N)
        BENCH_PG="postgresql://postgres@127.0.0.1:5432/fepd_bench?sslmode=disable" SLING_DISABLE_TELEMETRY=true \
            "$sling_bin" run --src-conn BENCH_PG --src-stream public.subsidy_payment --tgt-object "file://$dir/sling.jsonl" >"$dir/sling.log" 2>&1 \
            || { echo "sling failed:"; tail -5 "$dir/sling.log"; }
        sling_s=$(echo "$(date +%s.%N) - $start" | bc)
        sling_rows=$(wc -l < "$dir/sling.jsonl" 2>/dev/null || echo 0)
        sling_rate=$(echo "$sling_rows / $sling_s" | bc)
        echo "sling: $sling_rows rows in $sling_s s"
    else
        echo "sling not available (set SLING_BINARY)"
    fi
    awk -v n="$records" -v s="$seconds" -v k="$rss_kb" -v c="$copy_s" -v r="$rows" -v sl="$sling_rate" \
        'BEGIN { printf "bench postgres-dir: %d records/s, peak RSS %.0f MiB, copy limit %d rows/s, sling %d rows/s\n", n / s, k / 1024, r / c, sl }'
    ;;
postgres-amqp)
    # The same PostgreSQL table, end to end into the machine's RabbitMQ (127.0.0.1:5672,
    # guest/guest): persistent messages, publisher confirms, 5,000-record batches, onto a
    # queue bound for the run. Then, in the same run, the broker's publish limit for the
    # same bytes: every batch, already built and spooled, published again with the same
    # sink, batching and confirms (`fepd spool replay --from-seq 1`). And the naive
    # department script (psycopg2 + pika, one message per row with a confirm) on
    # BENCH_NAIVE_ROWS rows (default 5000), for the ratio.
    ensure_pg_table
    python3 -c 'import pika' 2>/dev/null || pip install -q pika psycopg2-binary >/dev/null
    python3 -c 'import psycopg2' 2>/dev/null || pip install -q psycopg2-binary >/dev/null
    dir="$work/postgres-amqp"
    exchange="fep.records.bench.$$"
    queue="fepd.bench.$$"
    write_pg_agent "$dir" "type = \"amqp\"
urls = [\"amqp://127.0.0.1:5672/%2f\"]
user = \"guest\"
password = { env = \"BENCH_AMQP_PASSWORD\" }
exchange = \"$exchange\"
control_exchange = \"$exchange.control\"
${BENCH_SINK_EXTRA:-}"
    amqp() { python3 - "$@" <<'PY'
import sys, pika
what, exchange, queue = sys.argv[1:4]
c = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
ch = c.channel()
if what == "setup":
    for e in (exchange, exchange + ".control"):
        ch.exchange_declare(e, "topic", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "#")
    ch.queue_bind(queue, exchange + ".control", "#")
elif what == "purge":
    ch.queue_purge(queue)
else:
    ch.queue_delete(queue)
    for e in (exchange, exchange + ".control"):
        ch.exchange_delete(e)
c.close()
PY
    }
    amqp setup "$exchange" "$queue"
    trap 'amqp delete "$exchange" "$queue" || true' EXIT
    export BENCH_AMQP_PASSWORD=guest
    timed_run "$dir"
    "$bin" verify --amqp "amqp://guest:guest@127.0.0.1:5672/%2f" --queue "$queue" --pubkey "$dir/public.key" --expect "$records" --idle 10s | tail -2

    amqp purge "$exchange" "$queue"
    start=$(date +%s.%N)
    "$bin" --config "$dir/fepd.toml" --log warn spool replay subsidy --from-seq 1 | tail -1
    publish_s=$(echo "$(date +%s.%N) - $start" | bc)
    echo "publish limit: $records records re-published in $publish_s s"

    naive_rows=${BENCH_NAIVE_ROWS:-5000}
    naive=$(python3 bench/naive_pika.py --limit "$naive_rows" --exchange "naive.bench.$$" --queue "naive.bench.$$" | tail -1)
    echo "$naive"
    naive_rate=$(echo "$naive" | grep -oE '[0-9.]+ rows/s' | grep -oE '^[0-9.]+')
    awk -v n="$records" -v s="$seconds" -v nv="$naive_rate" \
        'BEGIN { printf "fepd vs the naive per-row script: %.0fx (%d vs %.0f records/s)\n", (n / s) / nv, n / s, nv }'
    awk -v n="$records" -v s="$seconds" -v k="$rss_kb" -v p="$publish_s" \
        'BEGIN { printf "bench postgres-amqp: %d records/s, peak RSS %.0f MiB, publish limit %d records/s\n", n / s, k / 1024, n / p }'
    ;;
*)
    echo "unknown benchmark $what (known: sqlite-dir, postgres-dir, postgres-amqp)" >&2; exit 2 ;;
esac
