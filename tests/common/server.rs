//! The real binary as a child process, for tests that kill it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ALICE, TestDb};

/// A `tether serve` child process; killed with SIGKILL when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Server {
    /// `tether serve` on a free port with short timings and fault injection, in SQS mode when
    /// the database has queues; `extra` flags last.
    pub fn start(db: &TestDb, extra: &[&str]) -> Server {
        Self::try_start(db, extra).expect("tether exited before it was ready")
    }

    /// Like `start`, but `None` when the process exits before it is ready (a test whose
    /// commands crash the process may see that).
    pub fn try_start(db: &TestDb, extra: &[&str]) -> Option<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--addr", "127.0.0.1:0", "--fault-injection"])
            .args(["--database-url", &db.url])
            .args(["--api-keys", &format!("alice:{ALICE}")])
            .args([
                "--lease-ms",
                "600",
                "--heartbeat-ms",
                "200",
                "--sweep-ms",
                "100",
            ])
            .args([
                "--retry-base-ms",
                "20",
                "--retry-factor",
                "2",
                "--poll-ms",
                "50",
            ])
            .envs(db.sqs.as_ref().map(|q| q.env()).unwrap_or_default())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning tether");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let rest = line.strip_prefix("tether is ready on ")?;
            Some(rest.split_whitespace().next().expect("url").to_owned())
        });
        let Some(url) = ready else {
            // It exited before it was ready: reap it.
            let _ = child.wait();
            return None;
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(Server {
            child,
            url,
            http: super::http(),
        })
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
        self.child.wait().expect("reaping tether");
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Result<Value, reqwest::Error> {
        let resp = self
            .http
            .post(&self.url)
            .header("x-api-key", ALICE)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?;
        resp.json().await
    }

    pub async fn wait_terminal(&self, trace_id: &str) -> Value {
        let q = "query($t: ID!) { trace(traceId: $t) { state attempts events { seq message } } }";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let trace = self
                .gql(q, json!({ "t": trace_id }))
                .await
                .expect("trace query")["data"]["trace"]
                .clone();
            assert!(
                !trace.is_null(),
                "accepted trace {trace_id} is missing after the restart (G1)"
            );
            if ["SUCCEEDED", "FAILED", "DEAD_LETTERED"].contains(&trace["state"].as_str().unwrap())
            {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} never terminated (G2): {trace}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
