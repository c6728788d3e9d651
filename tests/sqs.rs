//! SQS as the command queue and as the side-effect queue, on the emulator (moto), with faults:
//! SQS unreachable at accept, an outage in the middle of a run, a restart that loses every
//! message, duplicate deliveries to two workers, foreign producers' messages (valid and not),
//! and a poison message under a redrive policy. Afterwards: one terminal state per trace,
//! each order once, each side-effect event downstream, at most 4 attempts.
//! (The pipeline, API, crash and cluster tests also run with SQS: their `sqs::` variants.)

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::server::Server;
use common::sqs::{self, Moto, Proxy, Queues};
use common::*;
use serde_json::{Value, json};

/// Polls `sql` (a count) until it reaches `at_least` (bounded).
async fn wait_count(db: &TestDb, sql: &'static str, at_least: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = db.count(sql).await;
        if n >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n} of {at_least}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the queue holds no message, visible or not: every one was deleted.
async fn wait_empty(queues: &Queues, url: &str) {
    let client = queues.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = sqs::depth(&client, url).await;
        if depth == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "messages left on the queue (visible, in flight): {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The invariants after a run: every command terminal in the state its input asks for, each
/// successful order written once and no other, at most 4 attempts, the outbox relayed, and
/// (when `downstream` is given) every outbox event on the event queue with its ID and type.
async fn assert_invariants(
    db: &TestDb,
    want: &HashMap<String, &str>,
    downstream: Option<&[Value]>,
) {
    let open =
        "SELECT count(*) FROM commands WHERE state NOT IN ('SUCCEEDED','FAILED','DEAD_LETTERED')";
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.count(open).await > 0 {
        assert!(Instant::now() < deadline, "commands never terminated (G2)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = db
        .rows(
            "SELECT c.trace_id, c.state, c.attempts, (SELECT count(*) FROM orders o WHERE o.trace_id = c.trace_id)
             FROM commands c",
            &[],
        )
        .await;
    let mut seen = HashSet::new();
    for row in &rows {
        let trace = row[0].as_str().unwrap();
        seen.insert(trace.to_owned());
        let (state, attempts, orders) = (
            row[1].as_str().unwrap(),
            row[2].as_i64().unwrap(),
            row[3].as_i64().unwrap(),
        );
        if let Some(wanted) = want.get(trace) {
            assert_eq!(state, *wanted, "trace {trace}");
        }
        assert!(attempts <= 4, "trace {trace}: {attempts} attempts (G6)");
        let expected_orders = if state == "SUCCEEDED" { 1 } else { 0 };
        assert_eq!(
            orders, expected_orders,
            "trace {trace} in {state} wrote {orders} orders (G3)"
        );
    }
    for trace in want.keys() {
        assert!(
            seen.contains(trace),
            "accepted trace {trace} is missing (G1)"
        );
    }
    let finished = "SELECT count(*) FROM outbox WHERE sent_at IS NULL";
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.count(finished).await > 0 {
        assert!(Instant::now() < deadline, "outbox rows never relayed (G4)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(downstream) = downstream {
        let by_id: HashMap<&str, &Value> = downstream
            .iter()
            .map(|e| (e["eventId"].as_str().unwrap(), e))
            .collect();
        for row in db
            .rows("SELECT event_id, event_type, trace_id FROM outbox", &[])
            .await
        {
            let id = row[0].as_str().unwrap();
            let event = by_id
                .get(id)
                .unwrap_or_else(|| panic!("outbox event {id} never reached the event queue (G4)"));
            assert_eq!(event["eventType"], row[1]);
            assert_eq!(event["traceId"], row[2]);
            assert_eq!(event["_attributes"]["eventId"], id);
            assert_eq!(event["_attributes"]["eventType"], row[1]);
        }
    }
}

/// Submits `n` orders: plain ones, ones failing their first attempt and slow ones.
async fn submit_mix(app: &TestApp, n: usize, tag: &str) -> HashMap<String, &'static str> {
    let mut want = HashMap::new();
    for i in 0..n {
        let input = match i % 4 {
            0 => faulty_order(json!({ "failAttempts": 1 })),
            1 => faulty_order(json!({ "delayMs": 300 })),
            _ => order(&format!("{tag}-{i}")),
        };
        want.insert(app.create_order(ALICE, input).await, "SUCCEEDED");
    }
    want
}

fn event_messages(trace: &Value) -> Vec<String> {
    trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn commands_and_side_effects_travel_through_sqs() {
    let db = TestDb::new(Backend::Sqs, "sqs-flow").await;
    let queues = db.sqs.clone().unwrap();
    let mut config = test_config(&db);
    queues.with_events(&mut config);
    let app = TestApp::start(db, config).await;

    let mut want = HashMap::new();
    for i in 0..20 {
        want.insert(
            app.create_order(ALICE, order(&format!("c{i}"))).await,
            "SUCCEEDED",
        );
    }
    for trace_id in want.keys() {
        let trace = app.wait_state(ALICE, trace_id, &["SUCCEEDED"]).await;
        assert_eq!(trace["attempts"], 1);
        let messages = event_messages(&trace);
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("createOrder picked up from SQS message")
                    && m.ends_with("(receive 1)")),
            "{messages:?}"
        );
    }
    wait_empty(&queues, &queues.commands).await;
    assert_eq!(app.db.count("SELECT count(*) FROM dispatch").await, 0);
    let events = sqs::drain(&queues.client(), &queues.events, Duration::from_millis(500)).await;
    assert_invariants(&app.db, &want, Some(&events)).await;
    assert_eq!(events.len(), 20, "one OrderCreated per order: {events:?}");
    app.stop().await;
}

#[tokio::test]
async fn sqs_unreachable_at_accept_loses_nothing_and_dispatch_catches_up() {
    let db = TestDb::new(Backend::Sqs, "sqs-down").await;
    let queues = db.sqs.clone().unwrap();
    let proxy = Proxy::start(&queues.endpoint).await;
    let mut config = test_config(&db);
    queues.with_events(&mut config);
    config.aws_endpoint_url = Some(proxy.endpoint());
    proxy.cut();
    let app = TestApp::start(db, config).await;

    // Accepts need only the database (G1): each one leaves its dispatch row behind.
    let want = submit_mix(&app, 12, "down").await;
    assert_eq!(app.db.count("SELECT count(*) FROM dispatch").await, 12);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM commands WHERE state = 'PENDING' AND attempts = 0")
            .await,
        12
    );

    proxy.restore();
    let events = collect_until_relayed(&app.db, &queues).await;
    assert_invariants(&app.db, &want, Some(&events)).await;
    assert_eq!(app.db.count("SELECT count(*) FROM dispatch").await, 0);
    wait_empty(&queues, &queues.commands).await;
    app.stop().await;
}

/// Drains the event queue until every command is terminal and the outbox is relayed.
async fn collect_until_relayed(db: &TestDb, queues: &Queues) -> Vec<Value> {
    let client = queues.client();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        events.extend(sqs::drain(&client, &queues.events, Duration::from_millis(100)).await);
        let open = db
            .count(
                "SELECT (SELECT count(*) FROM commands WHERE state NOT IN ('SUCCEEDED','FAILED','DEAD_LETTERED'))
                      + (SELECT count(*) FROM outbox WHERE sent_at IS NULL)",
            )
            .await;
        if open == 0 {
            events.extend(sqs::drain(&client, &queues.events, Duration::from_millis(300)).await);
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{open} commands or outbox rows left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_outage_mid_run_loses_nothing() {
    let db = TestDb::new(Backend::Sqs, "sqs-outage").await;
    let queues = db.sqs.clone().unwrap();
    let proxy = Proxy::start(&queues.endpoint).await;
    let mut config = test_config(&db);
    queues.with_events(&mut config);
    config.aws_endpoint_url = Some(proxy.endpoint());
    let app = TestApp::start(db, config).await;

    let mut want = submit_mix(&app, 40, "before").await;
    // Cut SQS while attempts run: their deletes, visibility changes and receives fail.
    wait_count(
        &app.db,
        "SELECT count(*) FROM commands WHERE state = 'SUCCEEDED'",
        5,
        "successes before the outage",
    )
    .await;
    proxy.cut();
    let running = app
        .db
        .count("SELECT count(*) FROM commands WHERE state IN ('RUNNING', 'RETRYING', 'PENDING')")
        .await;
    want.extend(submit_mix(&app, 8, "during").await);
    wait_count(
        &app.db,
        "SELECT count(*) FROM dispatch",
        8,
        "dispatch rows waiting for SQS",
    )
    .await;
    proxy.restore();

    let events = collect_until_relayed(&app.db, &queues).await;
    assert_invariants(&app.db, &want, Some(&events)).await;
    wait_empty(&queues, &queues.commands).await;
    eprintln!("{running} commands were not finished when SQS went away");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sqs_that_lost_its_messages_is_caught_up_by_redispatch() {
    // moto keeps everything in memory: a restart loses the queues and every message in them,
    // a harsher fault than SQS ever shows. Commands whose message is gone are re-sent by the
    // safety net once they have been due for `sqs_redispatch_ms`.
    let mut moto = Moto::start().await;
    let client = sqs::client(&moto.endpoint());
    let names = [
        format!("restart-cmd-{}", uuid::Uuid::new_v4().simple()),
        format!("restart-evt-{}", uuid::Uuid::new_v4().simple()),
    ];
    let create = |client: aws_sdk_sqs::Client, names: [String; 2]| async move {
        let mut urls = Vec::new();
        for name in names {
            urls.push(
                client
                    .create_queue()
                    .queue_name(name)
                    .send()
                    .await
                    .expect("create queue")
                    .queue_url()
                    .unwrap()
                    .to_owned(),
            );
        }
        urls
    };
    let urls = create(client.clone(), names.clone()).await;
    let mut db = TestDb::new(Backend::Postgres, "sqs-restart").await;
    db.sqs = Some(Queues {
        endpoint: moto.endpoint(),
        commands: urls[0].clone(),
        events: urls[1].clone(),
    });
    let mut config = test_config(&db);
    config.sqs_redispatch_ms = 1_500;
    let app = TestApp::start(db, config).await;

    let mut want = submit_mix(&app, 30, "before").await;
    wait_count(
        &app.db,
        "SELECT count(*) FROM commands WHERE state = 'SUCCEEDED'",
        5,
        "successes before the restart",
    )
    .await;
    moto.stop();
    want.extend(submit_mix(&app, 5, "during").await);
    moto.resume().await;
    let again = create(client, names).await;
    assert_eq!(again, urls, "the queues come back under the same URLs");

    assert_invariants(&app.db, &want, None).await;
    let resent = app
        .db
        .count("SELECT count(*) FROM trace_events WHERE message LIKE '%picked up from SQS message%' AND message NOT LIKE '%(receive 1)'")
        .await;
    eprintln!("{resent} attempts ran from a redelivered message");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_to_two_workers_run_the_command_once() {
    let db = TestDb::new(Backend::Sqs, "sqs-dup").await;
    let queues = db.sqs.clone().unwrap();
    let twin = TestDb {
        backend: db.backend,
        url: db.url.clone(),
        dir: scratch_dir("sqs-dup-twin"),
        sqs: db.sqs.clone(),
    };
    let (c1, c2) = (test_config(&db), test_config(&twin));
    let first = TestApp::start(db, c1).await;
    let second = TestApp::start(twin, c2).await;
    let client = queues.client();
    let send_copy = |trace: String| {
        let (client, url) = (client.clone(), queues.commands.clone());
        async move {
            client
                .send_message()
                .queue_url(url)
                .message_body(json!({ "traceId": trace }).to_string())
                .send()
                .await
                .expect("send a copy");
        }
    };

    // Copies arrive while the attempt runs: whoever receives them finds the lease held.
    let trace_id = first
        .create_order(ALICE, faulty_order(json!({ "delayMs": 1_000 })))
        .await;
    first.wait_state(ALICE, &trace_id, &["RUNNING"]).await;
    for _ in 0..4 {
        send_copy(trace_id.clone()).await;
    }
    second.wait_state(ALICE, &trace_id, &["SUCCEEDED"]).await;
    // The emitter reports on the trace after the commit: the trace is complete once it has.
    wait_count(
        &first.db,
        "SELECT count(*) FROM trace_events WHERE component = 'EventEmitter'",
        1,
        "the order's event published",
    )
    .await;
    let trace = second.trace(ALICE, &trace_id).await;
    // And a copy after the end is deleted without running anything.
    send_copy(trace_id.clone()).await;
    wait_empty(&queues, &queues.commands).await;

    let trace_after = first.trace(ALICE, &trace_id).await;
    assert_eq!(trace_after["attempts"], 1, "{trace_after}");
    assert_eq!(
        trace_after["events"], trace["events"],
        "nothing ran after the end"
    );
    let picked = event_messages(&trace_after)
        .into_iter()
        .filter(|m| m.contains("picked up"))
        .count();
    assert_eq!(picked, 1);
    assert_eq!(orders_of(&first.db, &trace_id).await, 1);
    assert_eq!(
        first
            .stats
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
            + second
                .stats
                .committed
                .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn foreign_producers_messages_are_adopted_once_and_bad_ones_become_dead_letters() {
    let db = TestDb::new(Backend::Sqs, "sqs-foreign").await;
    let queues = db.sqs.clone().unwrap();
    let config = test_config(&db);
    let app = TestApp::start(db, config).await;
    let client = queues.client();
    let send = |body: String| {
        let (client, url) = (client.clone(), queues.commands.clone());
        async move {
            client
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .expect("send")
                .message_id()
                .unwrap()
                .to_owned()
        }
    };

    // As an AppSync resolver sends it: a trace ID of its own (util.autoId(), a UUID v4), the
    // command mutation's name and its input. Delivered twice.
    let adopted = uuid::Uuid::new_v4().to_string();
    let message = json!({ "traceId": adopted, "command": "createOrder", "input": order("c-foreign"), "owner": "alice" });
    send(message.to_string()).await;
    send(message.to_string()).await;

    let garbage_id = send("hello, queue".into()).await;
    let invalid = uuid::Uuid::new_v4().to_string();
    send(json!({ "traceId": invalid, "command": "createOrder", "input": { "customerId": "", "items": [] } }).to_string()).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    send(json!({ "traceId": unknown, "command": "launchRocket", "input": {} }).to_string()).await;
    let bare = uuid::Uuid::new_v4().to_string();
    send(json!({ "traceId": bare }).to_string()).await;

    let trace = app.wait_state(ALICE, &adopted, &["SUCCEEDED"]).await;
    assert_eq!(trace["attempts"], 1);
    let first = &trace["events"][0];
    assert_eq!(first["component"], "TransactionListener");
    assert_eq!(first["status"], "ACCEPTED");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("createOrder accepted from SQS message"),
        "{first}"
    );
    assert_eq!(orders_of(&app.db, &adopted).await, 1);

    // Every message is gone from the queue: none loops.
    wait_empty(&queues, &queues.commands).await;
    let dead = app
        .db
        .rows(
            "SELECT trace_id, command_type, attempts, last_error FROM dead_letters ORDER BY id",
            &[],
        )
        .await;
    let by_trace: HashMap<&str, &Vec<Value>> =
        dead.iter().map(|r| (r[0].as_str().unwrap(), r)).collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert_eq!(by_trace[garbage_id.as_str()][1], "(unreadable)");
    assert!(
        by_trace[invalid.as_str()][3]
            .as_str()
            .unwrap()
            .starts_with("not a valid command"),
        "{dead:?}"
    );
    assert!(
        by_trace[unknown.as_str()][3]
            .as_str()
            .unwrap()
            .contains("no handler is registered for `launchRocket`"),
        "{dead:?}"
    );
    assert!(
        by_trace[bare.as_str()][3]
            .as_str()
            .unwrap()
            .contains("carries no command"),
        "{dead:?}"
    );
    for row in &dead {
        assert_eq!(row[2], 0, "dead-lettered without an attempt");
    }
    // A producer that handed out a trace ID can follow it and see why (owner: the default).
    let admin = app.trace(ADMIN, &invalid).await;
    assert_eq!(admin["state"], "DEAD_LETTERED", "{admin}");
    assert_eq!(admin["events"][1]["status"], "ERROR");
    assert_eq!(app.db.count("SELECT count(*) FROM orders").await, 1);
    app.stop().await;
}

/// One run of the poison test: a command that aborts the process on every attempt, under a
/// redrive policy of `max_receive`. Returns what reached SQS's own dead-letter queue.
async fn poison_run(max_receive: u32) -> (i64, Value) {
    let endpoint = sqs::endpoint();
    let client = sqs::client(&endpoint);
    let dlq = sqs::create_queue(&client, "poison-dlq", &[]).await;
    let arn = sqs::queue_arn(&client, &dlq).await;
    let policy = json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receive.to_string() });
    let commands = sqs::create_queue(
        &client,
        "poison",
        &[(QueueAttributeName::RedrivePolicy, policy.to_string())],
    )
    .await;
    let events = sqs::create_queue(&client, "poison-events", &[]).await;
    let mut db = TestDb::new(Backend::Postgres, "poison").await;
    db.sqs = Some(Queues {
        endpoint,
        commands,
        events,
    });

    let extra = ["--sqs-redispatch-ms", "1500"];
    let server = Server::start(&db, &extra);
    let body = server
        .gql(
            CREATE_ORDER,
            json!({ "i": faulty_order(json!({ "crashAttempts": 9 })) }),
        )
        .await
        .expect("accept");
    let trace_id = body["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut server = Some(server);
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = db
            .rows(
                "SELECT state FROM commands WHERE trace_id = $1",
                &[&trace_id],
            )
            .await;
        if state[0][0] == "DEAD_LETTERED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered after {restarts} restarts: {state:?}"
        );
        let exited = server
            .as_mut()
            .is_none_or(|s| s.child.try_wait().expect("child status").is_some());
        if exited {
            // The process died in an attempt (or before it was ready): start another.
            restarts += 1;
            server = Server::try_start(&db, &extra);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = server.unwrap_or_else(|| Server::start(&db, &extra));
    let trace = server.wait_terminal(&trace_id).await;
    drop(server);
    assert_eq!(trace["state"], "DEAD_LETTERED");
    assert_eq!(trace["attempts"], 4, "{trace}");
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM dead_letters WHERE trace_id = $1",
            &trace_id
        )
        .await,
        1,
        "exactly one dead letter in tether"
    );
    assert_eq!(orders_of(&db, &trace_id).await, 0);
    let in_dlq = sqs::drain(&client, &dlq, Duration::from_millis(300))
        .await
        .len() as i64;
    (in_dlq, trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_ends_as_exactly_one_dead_letter_whatever_the_redrive_policy() {
    // maxReceiveCount 10 (≥ 2 × 4 attempts + 2, the README's advice): tether decides alone,
    // SQS's dead-letter queue stays empty.
    let (in_dlq, _) = poison_run(10).await;
    assert_eq!(
        in_dlq, 0,
        "tether deleted the message once the trace was dead-lettered"
    );
    // maxReceiveCount 3, lower than tether's 4 attempts: SQS moves the message away after the
    // third crash; tether's safety net sends a new one and the fourth attempt still runs.
    let (in_dlq, trace) = poison_run(3).await;
    assert_eq!(in_dlq, 1, "SQS moved the original message: {trace}");
    let messages = event_messages(&trace);
    let picked: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("picked up from SQS message"))
        .collect();
    assert_eq!(picked.len(), 4, "{messages:?}");
    // Attempts and receives move together: the fourth attempt came from a new message.
    assert!(picked[3].ends_with("(receive 1)"), "{picked:?}");
}
