//! The SQS phase (`scripts/bench --sqs`): the same backlog drained by one `tether worker` with
//! the `commands` table as the queue and with SQS (the moto emulator) as the queue, in one run
//! and in A B B A order; then end-to-end latency in both modes at the same offered rate; and
//! the emulator on its own (send, receive and delete, no tether), to tell how much of the
//! difference is the emulator.

use aws_sdk_sqs::Client;

use super::*;

/// One mode's figures, merged over its two rounds.
#[derive(Default)]
struct Mode {
    rates: Vec<f64>,
    /// CPU cores the emulator kept busy during the drain (SQS mode only).
    moto_cores: Vec<f64>,
    checks: Vec<String>,
    e2e: Option<E2eUnderLoad>,
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .build();
    Client::from_conf(config)
}

async fn queue(client: &Client, name: &str) -> anyhow::Result<String> {
    Ok(client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .context("creating a queue on the emulator")?
        .queue_url()
        .context("a queue URL")?
        .to_owned())
}

/// The flags that put a tether process in SQS mode on fresh queues.
async fn sqs_args(client: &Client, endpoint: &str, round: &str) -> anyhow::Result<Vec<String>> {
    let commands = queue(client, &format!("bench-{round}-commands")).await?;
    let events = queue(client, &format!("bench-{round}-events")).await?;
    Ok([
        "--queue",
        "sqs",
        "--sqs-command-queue-url",
        &commands,
        "--sqs-event-queue-url",
        &events,
        "--aws-endpoint-url",
        endpoint,
        "--aws-region",
        "us-east-1",
    ]
    .map(String::from)
    .into())
}

/// The emulator alone: `n` messages sent in batches of 10, then received (10 at a time) and
/// deleted by 16 tasks; messages/s of each half.
async fn emulator_alone(client: &Client, n: usize) -> anyhow::Result<(f64, f64)> {
    let url = queue(client, &format!("bench-raw-{}", std::process::id())).await?;
    let started = Instant::now();
    let mut sends = Vec::new();
    for chunk in 0..n.div_ceil(10) {
        let (client, url) = (client.clone(), url.clone());
        sends.push(tokio::spawn(async move {
            let mut request = client.send_message_batch().queue_url(url);
            for i in 0..10 {
                request = request.entries(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(format!("{{\"traceId\":\"{chunk}-{i}\"}}"))
                        .build()
                        .expect("an entry"),
                );
            }
            request.send().await.map(|_| ())
        }));
        if sends.len() >= 16 {
            for s in sends.drain(..) {
                s.await??;
            }
        }
    }
    for s in sends {
        s.await??;
    }
    let sent = per_s((n.div_ceil(10) * 10) as u64, started.elapsed());
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, received) = (client.clone(), url.clone(), received.clone());
            tokio::spawn(async move {
                loop {
                    let out = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .visibility_timeout(120)
                        .send()
                        .await?;
                    if out.messages().is_empty() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    for m in out.messages() {
                        // A message another task received again after its visibility ran out
                        // has a new receipt handle: this delete fails, the other one counts.
                        let deleted = client
                            .delete_message()
                            .queue_url(&url)
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .send()
                            .await;
                        if deleted.is_ok() {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    // The last second is each task's empty long poll.
    let busy = started.elapsed().saturating_sub(Duration::from_secs(1));
    Ok((sent, per_s(received.load(Ordering::Relaxed), busy)))
}

pub(in super::super) async fn main(root: &Path, dir: &Path, opts: &Opts) -> anyhow::Result<()> {
    let env = Env::from_env(root);
    let endpoint = std::env::var("TETHER_BENCH_SQS_URL")
        .context("TETHER_BENCH_SQS_URL is not set (scripts/bench --sqs starts the emulator)")?;
    let moto_pid = std::env::var("TETHER_BENCH_MOTO_PID").ok();
    let sqs = client(&endpoint);
    // The emulator handles a few hundred calls a second (each one is Python under a development
    // web server), so the backlog is kept small enough to drain in SQS mode.
    let n: u64 = if opts.quick { 1_000 } else { 2_000 };
    let mut modes: BTreeMap<&str, Mode> = BTreeMap::new();
    let mut failures = Vec::new();
    eprintln!("load: (sqs) backlog {n}, one worker, db / sqs / sqs / db …");
    for (i, mode) in ["db", "sqs", "sqs", "db"].into_iter().enumerate() {
        let round = format!("sqs{i}_{mode}");
        let db = env.create_db(&round).await?;
        let extra = match mode {
            "sqs" => sqs_args(&sqs, &endpoint, &round).await?,
            _ => Vec::new(),
        };
        let moto_before = moto_pid.as_deref().and_then(cpu_seconds);
        match tether_drain(&env, dir, &db, 1, n, opts, &extra).await {
            Ok(run) => {
                let entry = modes.entry(mode).or_default();
                if let Some(rate) = run.busy_rate() {
                    entry.rates.push(rate);
                }
                if mode == "sqs"
                    && let (Some(a), Some(b), Some(from_spawn)) = (
                        moto_before,
                        moto_pid.as_deref().and_then(cpu_seconds),
                        run.from_spawn,
                    )
                {
                    entry.moto_cores.push((b - a) / from_spawn.as_secs_f64());
                }
                entry
                    .checks
                    .push(format!("{}: {}", run.describe("commands"), run.check));
            }
            Err(e) => failures.push(format!("{mode} drain: {e:#}")),
        }
        env.drop_db(&db).await;
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let slower = ["db", "sqs"]
        .iter()
        .filter_map(|m| mean(&modes.get(m)?.rates))
        .fold(f64::INFINITY, f64::min);
    if slower.is_finite() {
        let rate = (slower / 2.0).max(1.0);
        for mode in ["db", "sqs"] {
            eprintln!("load: (sqs) end-to-end in {mode} mode at ~{rate:.0}/s offered …");
            let round = format!("sqs_e2e_{mode}");
            let db = env.create_db(&round).await?;
            let extra = match mode {
                "sqs" => sqs_args(&sqs, &endpoint, &round).await?,
                _ => Vec::new(),
            };
            let e2e = async {
                migrate(&env.url(&db)).await?;
                let (api, _workers) = start_cluster(dir, &env, &db, 1, &extra).await?;
                e2e_under_load(&api, &env.url(&db), rate, 1, opts).await
            };
            match e2e.await {
                Ok(e) => modes.entry(mode).or_default().e2e = Some(e),
                Err(e) => failures.push(format!("{mode} end-to-end: {e:#}")),
            }
            env.drop_db(&db).await;
        }
    }
    eprintln!("load: (sqs) the emulator alone …");
    let alone = emulator_alone(&sqs, n as usize).await;

    let mut rows = Vec::new();
    for mode in ["db", "sqs"] {
        let Some(m) = modes.get(mode) else { continue };
        let name = if mode == "db" {
            "commands table"
        } else {
            "SQS (moto)"
        };
        rows.push(row(
            &format!("executed commands/s, 1 worker, queue = {name} (two rounds)"),
            format!(
                "{} (mean {:.0}/s)",
                m.rates
                    .iter()
                    .map(|r| format!("{r:.0}/s"))
                    .collect::<Vec<_>>()
                    .join(", "),
                mean(&m.rates).unwrap_or(0.0)
            ),
            "",
        ));
        for c in &m.checks {
            rows.push(row(&format!("  {name} round"), c.clone(), ""));
        }
        if let Some(cores) = mean(&m.moto_cores) {
            rows.push(row(
                "  CPU cores of the emulator during the drain",
                format!("{cores:.2}"),
                "",
            ));
        }
        if let Some(e) = &m.e2e {
            let mut l = e.e2e.latencies.clone();
            l.sort();
            rows.push(row(
                &format!("end-to-end mutation → SUCCESS on a subscription, queue = {name}"),
                format!(
                    "p50 {} / p99 {} at {:.0}/s offered ({:.0}/s achieved), {} commands, errors: {}",
                    ms(percentile(&l, 50.0)),
                    ms(percentile(&l, 99.0)),
                    e.target_rate,
                    e.achieved_rate,
                    l.len(),
                    e.e2e.errors.summary()
                ),
                "",
            ));
        }
    }
    if let (Some(db), Some(q)) = (
        modes.get("db").and_then(|m| mean(&m.rates)),
        modes.get("sqs").and_then(|m| mean(&m.rates)),
    ) {
        rows.push(row(
            "ratio SQS ÷ commands table, executed/s",
            format!("{:.2}", q / db),
            "",
        ));
    }
    match alone {
        Ok((sent, received)) => rows.push(row(
            "the emulator alone: SendMessageBatch / ReceiveMessage + DeleteMessage (16 tasks)",
            format!("{sent:.0} messages/s sent; {received:.0} messages/s received and deleted"),
            "",
        )),
        Err(e) => failures.push(format!("emulator alone: {e:#}")),
    }
    println!("\n{}", text_table(&rows));
    for f in &failures {
        println!("problem: {f}");
    }
    if opts.write {
        let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let hash = git(root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let mut section = format!(
            "## SQS results ({date}, {hash})\n\nCommand: `scripts/bench --sqs{}` (PostgreSQL found like \
             `scripts/test`; the moto emulator, `moto[server]` 5.2.5, started by the script on a free port). \
             Backlog {n} commands accepted through `serve --role api`, then one `tether worker` drains it \
             (rounds in the order commands table, SQS, SQS, commands table, each on its own database and \
             queues); then end-to-end latency in each mode at half the slower mode's rate; then the \
             emulator alone. Same machine, 2 vCPU, shared: compare figures of the same run.\n\n",
            if opts.quick { " --quick --write" } else { "" }
        );
        section.push_str(&markdown_table(&rows));
        for f in &failures {
            section.push_str(&format!("\nproblem: {f}\n"));
        }
        let path = root.join("BENCHMARKS.md");
        write_benchmarks_md(&path, "## SQS results (", &section)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from("| Figure | Result |\n|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} |\n",
            r.figure.trim(),
            r.value.replace('|', "/")
        ));
    }
    out
}
