#!/usr/bin/env python3
"""The "naive department script" baseline for the benchmarks.

What a department typically writes instead of fepd: read rows out of a PostgreSQL table
and publish one persistent JSON message per row to RabbitMQ, waiting for the broker's
publisher confirm after each one (pika BlockingConnection in confirm mode). No schema,
no validation, no hash chain, no spool, no batching.

Defaults fit bench/run.sh postgres-dir: database fepd_bench, table subsidy_payment, user
postgres on 127.0.0.1 (trust auth).

  python3 bench/naive_pika.py [--dsn DSN] [--table subsidy_payment] [--limit 20000]
      [--url amqp://guest:guest@127.0.0.1:5672/%2f] [--exchange naive.bench]
      [--queue naive.bench] [--keep]

The exchange (topic, durable) and the queue (durable, bound with '#') are declared, and
both are deleted at the end unless --keep. The last line is:
  naive: <rows> rows in <s> s, <rate> rows/s
timed from the query to the last confirm.

Needs: pip install pika psycopg2-binary (psycopg v3 is used if psycopg2 is missing).
"""

import argparse
import json
import sys
import time

import pika

try:
    import psycopg2
    import psycopg2.extras
    from psycopg2 import sql

    def open_rows(dsn, table, limit, fetch):
        conn = psycopg2.connect(dsn)
        # A named (server-side) cursor streams; a plain one would load the whole result.
        cur = conn.cursor(name="naive_rows", cursor_factory=psycopg2.extras.RealDictCursor)
        cur.itersize = fetch
        cur.execute(query(sql, table, limit), (limit,) if limit > 0 else None)
        return conn, cur

except ImportError:  # psycopg v3
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    def open_rows(dsn, table, limit, fetch):
        conn = psycopg.connect(dsn)
        cur = conn.cursor(name="naive_rows", row_factory=dict_row)
        cur.itersize = fetch
        cur.execute(query(sql, table, limit), (limit,) if limit > 0 else None)
        return conn, cur


def query(sql, table, limit):
    ident = sql.Identifier(*table.split("."))
    q = sql.SQL("SELECT * FROM {}").format(ident)
    if limit > 0:
        q = q + sql.SQL(" LIMIT %s")
    return q


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default="host=127.0.0.1 port=5432 dbname=fepd_bench user=postgres")
    ap.add_argument("--table", default="subsidy_payment", help="table, optionally schema.table")
    ap.add_argument("--limit", type=int, default=20000, help="rows to send (0 = all; default 20000)")
    ap.add_argument("--fetch", type=int, default=2000, help="rows fetched per round trip")
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--exchange", default="naive.bench")
    ap.add_argument("--queue", default="naive.bench")
    ap.add_argument("--routing-key", default="individual_subsidy.430124")
    ap.add_argument("--keep", action="store_true", help="keep the exchange, queue and messages")
    args = ap.parse_args(argv)

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.exchange_declare(args.exchange, "topic", durable=True)
    channel.queue_declare(args.queue, durable=True)
    channel.queue_bind(args.queue, args.exchange, routing_key="#")
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    rows = 0
    started = time.perf_counter()
    db, cur = open_rows(args.dsn, args.table, args.limit, args.fetch)
    try:
        for row in cur:
            body = json.dumps(row, default=str)
            # In confirm mode this blocks until the broker acks (raises on nack/return).
            channel.basic_publish(args.exchange, args.routing_key, body, props, mandatory=True)
            rows += 1
    finally:
        cur.close()
        db.close()
    seconds = time.perf_counter() - started

    if not args.keep:
        channel.queue_delete(args.queue)
        channel.exchange_delete(args.exchange)
    connection.close()
    rate = rows / seconds if seconds > 0 else 0.0
    print(f"naive: {rows} rows in {seconds:.2f} s, {rate:.0f} rows/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
