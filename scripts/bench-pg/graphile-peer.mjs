// The graphile-worker peer of tether's PostgreSQL benchmark (benches/load.rs, `scripts/bench --pg`).
//
//   node graphile-peer.mjs setup URL JOBS
//       installs graphile-worker's schema, creates the table the job writes to, and queues JOBS
//       jobs with one bulk call of graphile_worker.add_jobs; prints one JSON line.
//   node graphile-peer.mjs run URL CONCURRENCY MODE
//       runs a worker with CONCURRENCY jobs at once until SIGTERM; prints "graphile worker ready"
//       once the runner has started. MODE is "default" (one job fetched per worker, one
//       completion per job: graphile-worker's defaults) or "batched" (the documented batching
//       options: a local queue of jobs fetched in batches, completions batched).
//
// The benchmark times the drain itself, by polling the job table, exactly as it does for tether.
// The job: one INSERT of a row shaped like tether's order row.

import { Logger, run, runMigrations } from "graphile-worker";
import pg from "pg";

const [mode, url, arg1, arg2] = process.argv.slice(2);

const TABLE = `CREATE TABLE IF NOT EXISTS bench_orders (
    order_id    TEXT PRIMARY KEY,
    trace_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    items       TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL)`;

const INSERT = `INSERT INTO bench_orders
    (order_id, trace_id, customer_id, items, total_cents, status, created_at, updated_at)
    VALUES (gen_random_uuid()::text, $1, $2, $3, $4, 'CREATED', $5, $5)`;

const taskList = {
  insert_order: async (payload, helpers) => {
    const items = payload.items ?? [];
    const total = items.reduce((sum, i) => sum + i.quantity * i.unitPriceCents, 0);
    await helpers.query(INSERT, [
      String(helpers.job.id),
      payload.customerId,
      JSON.stringify(items),
      total,
      Date.now(),
    ]);
  },
};

async function setup(jobs) {
  const started = performance.now();
  await runMigrations({ connectionString: url, logger: quietLogger() });
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(TABLE);
    await client.query("TRUNCATE bench_orders");
    const queued = performance.now();
    // Bulk enqueue in chunks of 10000 (one add_jobs call each, like addJobs does).
    let added = 0;
    for (let first = 1; first <= jobs; first += 10000) {
      const last = Math.min(jobs, first + 9999);
      const { rows } = await client.query(
        `SELECT count(*)::int AS n FROM graphile_worker.add_jobs(ARRAY(
             SELECT json_populate_record(NULL::graphile_worker.job_spec, json_build_object(
                 'identifier', 'insert_order',
                 'payload', json_build_object(
                     'customerId', 'c-' || (i % 32),
                     'items', json_build_array(json_build_object(
                         'sku', 'tea', 'quantity', 2, 'unitPriceCents', 450)))))
             FROM generate_series($1::int, $2::int) AS i))`,
        [first, last],
      );
      added += rows[0].n;
    }
    await client.query("ANALYZE");
    const done = performance.now();
    console.log(
      JSON.stringify({
        enqueued: added,
        enqueue_seconds: (done - queued) / 1000,
        setup_seconds: (done - started) / 1000,
      }),
    );
  } finally {
    await client.end();
  }
}

async function work(concurrency, how) {
  const preset =
    how === "batched"
      ? {
          worker: {
            // "A good starting point is often concurrentJobs + 1" (graphile-worker's docs);
            // the queue here is full, so a larger batch only helps it.
            localQueue: { size: 4 * concurrency },
            completeJobBatchDelay: 0,
            failJobBatchDelay: 0,
          },
        }
      : undefined;
  const runner = await run({
    connectionString: url,
    concurrency,
    // One connection per job in flight, plus the LISTEN connection and a spare (tether's
    // worker: a pool of 16 plus its LISTEN connection, 16 attempts in flight).
    maxPoolSize: concurrency + 2,
    noHandleSignals: true,
    pollInterval: 1000,
    taskList,
    logger: quietLogger(),
    preset,
  });
  console.log("graphile worker ready");
  let failed = 0;
  runner.events.on("job:failed", ({ error }) => {
    if (failed++ < 5) console.error(`job failed: ${error}`);
  });
  const stop = async () => {
    await runner.stop().catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await runner.promise;
}

function quietLogger() {
  // Errors and warnings only, on stderr (the benchmark keeps it in a log file).
  return new Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
  });
}

if (mode === "setup") {
  await setup(Number(arg1));
} else if (mode === "run") {
  await work(Number(arg1), arg2 ?? "default");
} else {
  console.error("usage: graphile-peer.mjs setup URL JOBS | run URL CONCURRENCY default|batched");
  process.exit(2);
}
