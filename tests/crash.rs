//! The real binary, killed: `kill -9` in the middle of a load and an injected `abort()` in an
//! attempt. After a restart every accepted trace reaches exactly one terminal state, no order
//! is written twice, and crashes count as attempts (G1, G2, G3, G6). Each test runs on SQLite,
//! on PostgreSQL, and on PostgreSQL with SQS as the command queue.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Server;
use common::*;
use serde_json::{Value, json};

async fn kill_9_mid_load_loses_nothing_and_duplicates_nothing(backend: Backend) {
    let db = TestDb::new(backend, "kill9").await;
    let mut server = Server::start(&db, &[]);
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for client in 0..16 {
        let url = server.url.clone();
        let accepted = accepted.clone();
        clients.push(tokio::spawn(async move {
            let http = common::http();
            let mut n = 0;
            while Instant::now() < stop_at && n < 2000 {
                n += 1;
                // A mix: plain orders, orders that fail once, orders that take a while.
                let input = match (client + n) % 5 {
                    0 => faulty_order(json!({ "failAttempts": 1 })),
                    1 => faulty_order(json!({ "delayMs": 150 })),
                    _ => order("c-load"),
                };
                let body = json!({ "query": CREATE_ORDER, "variables": { "i": input } });
                let Ok(resp) = http
                    .post(&url)
                    .header("x-api-key", ALICE)
                    .json(&body)
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue; // the server is down: the command was never accepted
                };
                if let Ok(v) = resp.json::<Value>().await
                    && let Some(id) = v["data"]["createOrder"]["traceId"].as_str()
                {
                    accepted.lock().unwrap().push(id.to_owned());
                }
            }
        }));
    }
    // Kill while accepts and attempts are in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    // Answers already on the wire may still be read after the kill: they count as accepted.
    for c in clients {
        c.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();

    let server = Server::start(&db, &[]);
    let mut unique = HashSet::new();
    for trace_id in &accepted {
        assert!(
            unique.insert(trace_id.clone()),
            "trace {trace_id} was handed out twice"
        );
        let trace = server.wait_terminal(trace_id).await;
        assert_eq!(trace["state"], "SUCCEEDED", "{trace_id}: {trace}");
        assert!(trace["attempts"].as_i64().unwrap() <= 4, "{trace}");
    }
    // Every command in the database (answered or not) ran to one end, and wrote its order once.
    let open = db
        .count("SELECT count(*) FROM commands WHERE state NOT IN ('SUCCEEDED','FAILED','DEAD_LETTERED')")
        .await;
    let commands = db.count("SELECT count(*) FROM commands").await;
    let duplicated = db
        .count("SELECT count(*) FROM (SELECT trace_id FROM orders GROUP BY trace_id HAVING count(*) > 1) AS d")
        .await;
    let succeeded_without_order = db
        .count("SELECT count(*) FROM commands c WHERE state = 'SUCCEEDED' AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.trace_id = c.trace_id)")
        .await;
    let orders = db.count("SELECT count(*) FROM orders").await;
    assert_eq!(open, 0, "commands left unfinished");
    assert_eq!(duplicated, 0, "orders written twice (G3)");
    assert_eq!(succeeded_without_order, 0);
    assert_eq!(orders, commands, "one order per command");
    let crashed = db
        .count("SELECT count(*) FROM trace_events WHERE message LIKE '%lost its lease%'")
        .await;
    eprintln!(
        "accepted {} answered commands of {commands} stored; {crashed} attempts were cut by the kill",
        accepted.len()
    );
}

async fn a_crash_in_an_attempt_counts_as_an_attempt(backend: Backend) {
    let db = TestDb::new(backend, "abort").await;
    let server = Server::start(&db, &[]);
    let submit = json!({ "i": faulty_order(json!({ "crashAttempts": 1 })), "k": "crash-1" });
    // The executor aborts the whole process on attempt 1, which may come before the answer
    // reaches the client: then, like any client, it asks again with the same key once the
    // server is back, and learns the trace its first request made.
    let answered = server.gql(CREATE_ORDER, submit.clone()).await.ok();
    let mut server = server;
    let exited = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().expect("waiting for the crash");
        (server, status)
    });
    let (server, status) = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("tether should abort")
        .unwrap();
    assert!(
        !status.success(),
        "the injected crash must kill the process"
    );
    drop(server);

    let server = Server::start(&db, &[]);
    let body = match answered {
        Some(body) => body,
        None => server
            .gql(CREATE_ORDER, submit)
            .await
            .expect("the same command again after the restart"),
    };
    let trace_id = body["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap_or_else(|| panic!("a trace id: {body}"))
        .to_owned();
    let trace = server.wait_terminal(&trace_id).await;
    assert_eq!(trace["state"], "SUCCEEDED", "{trace}");
    assert_eq!(trace["attempts"], 2, "the crashed attempt counts: {trace}");
    let commands = db.count("SELECT count(*) FROM commands").await;
    assert_eq!(commands, 1, "one command, whichever answer the client got");
    let messages: Vec<&str> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("attempt 1 lost its lease")),
        "{messages:?}"
    );
    assert_eq!(orders_of(&db, &trace_id).await, 1);
}

contract!(
    multi_thread;
    kill_9_mid_load_loses_nothing_and_duplicates_nothing,
    a_crash_in_an_attempt_counts_as_an_attempt,
);
// With SQS as the command queue: messages in flight when the worker dies come back after
// their visibility timeout, and the command row decides what they mean.
contract_sqs!(
    multi_thread;
    kill_9_mid_load_loses_nothing_and_duplicates_nothing,
    a_crash_in_an_attempt_counts_as_an_attempt,
);
