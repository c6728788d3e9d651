//! The SQS emulator (moto) for tests: each test makes its own queues on the emulator the
//! README's test command started (`TETHER_TEST_SQS_URL`); tests that stop and restart SQS run
//! a private emulator (`TETHER_TEST_MOTO` names its binary).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::Value;

pub fn endpoint() -> String {
    std::env::var("TETHER_TEST_SQS_URL").unwrap_or_else(|_| {
        panic!(
            "TETHER_TEST_SQS_URL is not set: run the tests through scripts/test, which installs \
             and starts the SQS emulator (moto)"
        )
    })
}

/// A client with dummy credentials (moto takes any).
pub fn client(endpoint: &str) -> Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    Client::from_conf(config)
}

/// A queue named after the test, unique per run.
pub async fn create_queue(
    client: &Client,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let name = format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut request = client.create_queue().queue_name(&name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), v);
    }
    request
        .send()
        .await
        .expect("creating a queue on the emulator")
        .queue_url()
        .expect("a queue URL")
        .to_owned()
}

pub async fn queue_arn(client: &Client, url: &str) -> String {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("a queue ARN")
}

/// A test's queues: the command queue, and an event queue for tests that read side effects.
#[derive(Debug, Clone)]
pub struct Queues {
    pub endpoint: String,
    pub commands: String,
    pub events: String,
}

impl Queues {
    pub async fn create(name: &str) -> Self {
        let endpoint = endpoint();
        let client = client(&endpoint);
        Self {
            commands: create_queue(&client, &format!("{name}-commands"), &[]).await,
            events: create_queue(&client, &format!("{name}-events"), &[]).await,
            endpoint,
        }
    }

    /// SQS mode for an in-process app. Side effects stay on the in-process bus unless a test
    /// asks for the event queue (`with_events`).
    pub fn configure(&self, c: &mut tether::Config) {
        c.queue = tether::config::QueueKind::Sqs;
        c.sqs_command_queue_url = Some(self.commands.clone());
        c.aws_endpoint_url = Some(self.endpoint.clone());
        c.aws_region = Some("us-east-1".into());
        c.sqs_wait_seconds = 1;
    }

    pub fn with_events(&self, c: &mut tether::Config) {
        c.sqs_event_queue_url = Some(self.events.clone());
    }

    /// SQS mode for a spawned binary, as environment variables (with dummy credentials).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("TETHER_QUEUE", "sqs"),
            ("TETHER_SQS_COMMAND_QUEUE_URL", &self.commands),
            ("TETHER_SQS_EVENT_QUEUE_URL", &self.events),
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("TETHER_SQS_WAIT_SECONDS", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    pub fn client(&self) -> Client {
        client(&self.endpoint)
    }
}

/// Every message on the queue, received and deleted until it stays empty for `quiet`.
pub async fn drain(client: &Client, url: &str, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let got = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        for m in got.messages() {
            last = Instant::now();
            let mut body: Value = serde_json::from_str(m.body().unwrap()).expect("JSON body");
            let attributes: HashMap<String, String> = m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            body["_attributes"] = serde_json::to_value(attributes).unwrap();
            out.push(body);
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete");
        }
        if got.messages().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Messages waiting (visible plus in flight), as the emulator counts them.
pub async fn depth(client: &Client, url: &str) -> (i64, i64) {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |k: QueueAttributeName| -> i64 {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

pub const RECEIVE_COUNT: MessageSystemAttributeName =
    MessageSystemAttributeName::ApproximateReceiveCount;

/// A private emulator on a port of its own, for tests that stop SQS.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut moto = Self { child: None, port };
        moto.resume().await;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (its state is gone: moto keeps queues in memory).
    pub async fn resume(&mut self) {
        let bin = std::env::var("TETHER_TEST_MOTO").unwrap_or_else(|_| {
            panic!("TETHER_TEST_MOTO is not set: run the tests through scripts/test")
        });
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        self.child = Some(child);
        let http = super::http();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{}/moto-api/", self.endpoint()))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "moto still answers after it was stopped"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of the emulator that a test can cut: every open connection is dropped
/// and new ones are refused until it is restored. SQS as its clients see it during an outage,
/// while the emulator keeps its messages (as SQS does; a restarted moto would lose them).
pub struct Proxy {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, c) = (down.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            down,
            connections,
            accept,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
