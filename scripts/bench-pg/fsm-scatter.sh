#!/usr/bin/env bash
# Where PostgreSQL puts new small rows in a table that holds history, after VACUUM: the effect
# behind trace_events' weekly partitions (migrations/postgres/0004_trace_partitions.sql).
# Fills a trace_events-shaped table with 1M rows (125000 traces x 8 events, as tether writes
# them) in two ways: one INSERT ... SELECT (how benches/load/pg.rs loads its history) and
# 8 concurrent writers one trace per statement (closer to a table written live); then VACUUM,
# then 20000 ACCEPTED-sized rows from 8 clients, and counts the pages they landed in.
#   scripts/bench-pg/fsm-scatter.sh [postgres://user@host:port/db]   (needs psql and pgbench)
set -euo pipefail
url=${1:-postgres://postgres@127.0.0.1:5432/postgres}
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
db=tether_fsm_$$
psql "$url" -qc "CREATE DATABASE $db"
trap 'psql "$url" -qc "DROP DATABASE IF EXISTS $db"' EXIT
dburl="${url%/*}/$db"
export PGOPTIONS="-c client_min_messages=warning"
dir=$(mktemp -d)
events="(VALUES
    (1, 'CommandApi', 'ACCEPTED', NULL::int, 'createOrder accepted', 'PENDING'),
    (2, 'TransactionListener', 'ACCEPTED', 1, 'createOrder picked up from the commands table', 'RUNNING'),
    (3, 'TransactionManager', 'ACCEPTED', 1, 'attempt 1 started (lease 30000 ms)', 'RUNNING'),
    (4, 'CommandBuilder', 'SUCCESS', 1, 'createOrder built from its payload', 'SUCCEEDED'),
    (5, 'Command', 'SUCCESS', 1, 'createOrder done', 'SUCCEEDED'),
    (6, 'EventCollector', 'SUCCESS', 1, '1 event(s) collected for the outbox', 'SUCCEEDED'),
    (7, 'TransactionManager', 'SUCCESS', 1, 'attempt 1 committed', 'SUCCEEDED'),
    (8, 'EventEmitter', 'SUCCESS', NULL::int, NULL, 'SUCCEEDED')) AS e(seq, component, status, attempt, message, state)"
columns="e.seq, e.component, e.status, e.attempt,
    coalesce(e.message, 'published OrderCreated 0192f3a0-0000-7abc-adef-0123456789ab'),
    CASE e.seq WHEN 5 THEN '{\"orderId\":\"ord_0123456789abcdef0123456789abcdef\",\"totalCents\":900}'
        WHEN 6 THEN '{\"events\":[{\"eventId\":\"0192f3a0-0000-7abc-adef-0123456789ab\",\"eventType\":\"OrderCreated\"}],\"types\":[\"OrderCreated\"]}'
        WHEN 8 THEN '{\"eventId\":\"0192f3a0-0000-7abc-adef-0123456789ab\",\"eventType\":\"OrderCreated\"}' END,
    e.state, 1000 + e.seq"
cat >"$dir/trace.sql" <<SQL
INSERT INTO t SELECT md5(random()::text), $columns FROM $events;
SQL
cat >"$dir/accepted.sql" <<SQL
INSERT INTO t VALUES (md5(random()::text), 1, 'CommandApi', 'ACCEPTED', NULL, 'createOrder accepted', NULL, 'PENDING', 99);
SQL
for mode in "one INSERT ... SELECT" "8 writers, one trace per statement"; do
  psql "$dburl" -qc "DROP TABLE IF EXISTS t" -c "CREATE TABLE t (trace_id TEXT NOT NULL, seq BIGINT NOT NULL,
      component TEXT NOT NULL, status TEXT NOT NULL, attempt INTEGER, message TEXT, detail TEXT,
      state TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (trace_id, seq))"
  if [ "$mode" = "one INSERT ... SELECT" ]; then
    psql "$dburl" -qc "INSERT INTO t SELECT md5(g::text), $columns FROM generate_series(1, 125000) g CROSS JOIN $events"
  else
    "$pgbench" -n -c 8 -j 2 -t 15625 -f "$dir/trace.sql" "$dburl" >/dev/null
  fi
  psql "$dburl" -qc "VACUUM t"
  old_pages=$(psql "$dburl" -Atc "SELECT pg_relation_size('t') / 8192")
  "$pgbench" -n -c 8 -j 2 -t 2500 -f "$dir/accepted.sql" "$dburl" >/dev/null
  psql "$dburl" -Atc "SELECT '$mode: 1000000 rows in $old_pages pages; then 20000 new rows in '
      || count(DISTINCT (ctid::text::point)[0]) || ' pages, '
      || count(DISTINCT (ctid::text::point)[0]) FILTER (WHERE (ctid::text::point)[0] < $old_pages)
      || ' of them old ones' FROM t WHERE at = 99"
done
rm -rf "$dir"
