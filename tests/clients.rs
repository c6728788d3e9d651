//! The real npm clients against tether: `aws-appsync-subscription-link` 3.1 on Apollo 3 and
//! 4.0 on Apollo 4, Amplify JS v6 over `wss://` with a self-signed certificate, and
//! `graphql-ws`. Each runs the scripts in `tests/clients/` (installed, pinned, by
//! `tests/clients/install.sh`, which the README's test command calls): `createOrder` over
//! HTTP, a subscription to its trace, the history, until the manager's `SUCCESS`; a command that
//! fails until it is dead-lettered; and wrong keys over HTTP and on the socket. Each runs with
//! an API key and with OIDC (a JWT from a test issuer whose JWKS tether reads from a file).

mod common;

use std::path::PathBuf;

use common::auth::{Issuer, multi_mode_schema};
use common::*;
use serde_json::{Value, json};

const OIDC_ISSUER: &str = "https://id.tether.test";
const CLIENT: &str = "tether-web";

/// What a client script printed (one JSON object per line) and its exit code.
struct Run {
    lines: Vec<Value>,
    code: i32,
    stderr: String,
}

impl Run {
    fn events(&self) -> Vec<&Value> {
        self.lines.iter().filter_map(|l| l.get("event")).collect()
    }

    fn one(&self, key: &str) -> &Value {
        self.lines
            .iter()
            .find_map(|l| l.get(key))
            .unwrap_or_else(|| panic!("no `{key}` line in {:?}\n{}", self.lines, self.stderr))
    }
}

async fn run(client: &str, app: &TestApp, env: &[(&str, String)]) -> Run {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(client);
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run tests/clients/install.sh (scripts/test does)",
        dir.display()
    );
    let scheme = if client == "amplify" { "https" } else { "http" };
    let out = tokio::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .env("TETHER_URL", format!("{scheme}://{}/graphql", app.addr))
        .env("TETHER_TIMEOUT_MS", "20000")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("running node (Node 20 is needed for the client tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Run {
        lines: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn api_key(key: &str) -> String {
    json!({ "type": "API_KEY", "apiKey": key }).to_string()
}

/// The libraries send the token raw in `Authorization`.
fn oidc(token: &str) -> String {
    json!({ "type": "OPENID_CONNECT", "jwt": token }).to_string()
}

/// The fields the scripts' subscription selects; Apollo adds `__typename`.
const SELECTED: [&str; 8] = [
    "traceId",
    "seq",
    "component",
    "status",
    "timestamp",
    "attempt",
    "message",
    "__typename",
];

/// Live events of one trace, in order, shaped by the subscriber's selection.
fn check_live(run: &Run, trace_id: &str) -> Vec<i64> {
    let events = run.events();
    assert!(
        !events.is_empty(),
        "no live event reached the client: {:?}\n{}",
        run.lines,
        run.stderr
    );
    for e in &events {
        assert_eq!(e["traceId"], trace_id, "{e}");
        for key in e.as_object().unwrap().keys() {
            assert!(
                SELECTED.contains(&key.as_str()),
                "unselected field {key} in {e}"
            );
        }
        if let Some(t) = e.get("__typename") {
            assert_eq!(t, "TraceEvent");
        }
    }
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "live events out of order: {seqs:?}"
    );
    seqs
}

/// Returns the trace's ID.
async fn follows_a_command_from_accepted_to_success(
    client: &str,
    app: &TestApp,
    auth: String,
) -> String {
    // The first attempt waits, so most events happen after the client has subscribed.
    let input = faulty_order(json!({ "delayMs": 1000 })).to_string();
    let run = run(
        client,
        app,
        &[("TETHER_AUTH", auth), ("TETHER_INPUT", input)],
    )
    .await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let accepted = run.one("accepted");
    assert_eq!(accepted["status"], "ACCEPTED");
    let trace_id = accepted["traceId"].as_str().unwrap();
    let live = check_live(&run, trace_id);
    // History and live together: every event from 1 to the last, ACCEPTED first, the
    // manager's SUCCESS in it.
    let mut all = std::collections::BTreeMap::new();
    for e in run
        .one("history")
        .as_array()
        .unwrap()
        .iter()
        .chain(run.events())
    {
        all.insert(
            e["seq"].as_i64().unwrap(),
            (e["component"].clone(), e["status"].clone()),
        );
    }
    let seqs: Vec<i64> = all.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=*seqs.last().unwrap()).collect::<Vec<_>>(),
        "a gap: {seqs:?}"
    );
    assert_eq!(all[&1].1, "ACCEPTED");
    assert!(
        all.values()
            .any(|(c, s)| c == "TransactionManager" && s == "SUCCESS"),
        "{all:?}"
    );
    assert!(!live.is_empty());
    assert!(run.lines.iter().any(|l| l.get("done").is_some()));
    trace_id.to_owned()
}

async fn sees_the_error_events_of_a_failing_command(client: &str, app: &TestApp, auth: String) {
    let input = faulty_order(json!({ "delayMs": 1000, "failAttempts": 9 })).to_string();
    let run = run(
        client,
        app,
        &[
            ("TETHER_AUTH", auth),
            ("TETHER_INPUT", input),
            ("TETHER_UNTIL", "ErrorHandler:ERROR".into()),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let trace_id = run.one("accepted")["traceId"].as_str().unwrap().to_owned();
    check_live(&run, &trace_id);
    assert!(
        run.events().iter().any(|e| e["status"] == "ERROR"),
        "no ERROR event arrived live: {:?}",
        run.lines
    );
}

/// `trace_id` is alice's; `wrong` is a credential tether must refuse.
async fn wrong_credentials_are_refused_over_http_and_on_the_socket(
    client: &str,
    app: &TestApp,
    trace_id: String,
    wrong: String,
) {
    let http = run(client, app, &[("TETHER_AUTH", wrong.clone())]).await;
    assert_eq!(http.code, 3, "{:?}\n{}", http.lines, http.stderr);
    assert_eq!(
        http.one("error")["errorType"],
        "UnauthorizedException",
        "{:?}",
        http.lines
    );
    assert!(http.events().is_empty() && http.lines.iter().all(|l| l.get("accepted").is_none()));

    let socket = run(
        client,
        app,
        &[
            ("TETHER_AUTH", wrong),
            ("TETHER_SCENARIO", "subscribe-only".into()),
            ("TETHER_TRACE_ID", trace_id),
        ],
    )
    .await;
    assert_eq!(socket.code, 3, "{:?}\n{}", socket.lines, socket.stderr);
    let error = socket.one("error");
    let error_type = error["errorType"].as_str().unwrap_or_default();
    // AppSync clients report connection_error's UnauthorizedException; graphql-ws the close
    // code 4403 (Forbidden).
    assert!(
        error_type == "UnauthorizedException" || error["code"] == 4403,
        "{error}"
    );
    assert!(socket.events().is_empty());
}

async fn client_suite(client: &str) {
    let dir = scratch_dir("clients");
    let issuer = Issuer::new(&dir, OIDC_ISSUER, CLIENT);
    let schema = multi_mode_schema(&dir);
    let jwks = issuer.jwks_path.display().to_string();
    let app = TestApp::spawn_with(|c| {
        c.tls_self_signed = client == "amplify";
        c.schema = Some(schema);
        c.auth_additional = "AWS_IAM,OPENID_CONNECT".into();
        c.oidc_issuer = Some(OIDC_ISSUER.into());
        c.oidc_client_id = CLIENT.into();
        c.oidc_jwks = Some(jwks);
    })
    .await;
    let trace_id = follows_a_command_from_accepted_to_success(client, &app, api_key(ALICE)).await;
    follows_a_command_from_accepted_to_success(client, &app, oidc(&issuer.token("ann", 600))).await;
    sees_the_error_events_of_a_failing_command(client, &app, oidc(&issuer.token("ann", 600))).await;
    wrong_credentials_are_refused_over_http_and_on_the_socket(
        client,
        &app,
        trace_id.clone(),
        api_key("wrong"),
    )
    .await;
    // An expired token and one signed by a key tether does not hold.
    let forger = Issuer::new(&dir, OIDC_ISSUER, CLIENT);
    for token in [issuer.token("ann", -5), forger.token("ann", 600)] {
        wrong_credentials_are_refused_over_http_and_on_the_socket(
            client,
            &app,
            trace_id.clone(),
            oidc(&token),
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn appsync_subscription_link_3_on_apollo_3() {
    client_suite("apollo3").await;
}

#[tokio::test]
async fn appsync_subscription_link_4_on_apollo_4() {
    client_suite("apollo4").await;
}

#[tokio::test]
async fn amplify_v6_over_wss_with_a_self_signed_certificate() {
    client_suite("amplify").await;
}

#[tokio::test]
async fn graphql_ws() {
    client_suite("graphql-ws").await;
}
