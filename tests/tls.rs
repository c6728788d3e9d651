//! HTTPS and `wss://`: a certificate from PEM files, trusted by a real rustls client that
//! checks it (no "accept anything"), carrying a GraphQL POST and an AppSync real-time
//! subscription; a plain-HTTP client gets nothing from a TLS port.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A certificate for 127.0.0.1 written as PEM files; the client trusts exactly it.
fn certificate(
    dir: &std::path::Path,
) -> (
    CertificateDer<'static>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (generated.cert.der().clone(), cert, key)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with the configured certificate")
}

#[tokio::test]
async fn https_and_wss_serve_graphql_and_the_realtime_protocol() {
    let dir = scratch_dir("tls");
    let (trusted, cert, key) = certificate(&dir);
    let app = TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;

    // HTTPS: a createOrder over HTTP/1.1 on the TLS stream.
    let body = json!({ "query": CREATE_ORDER, "variables": { "i": order("c-tls") } }).to_string();
    let mut https = tls_connect(app.addr, &trusted).await;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         x-api-key: {ALICE}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    https.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    https.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json_start = response.find("\r\n\r\n").unwrap() + 4;
    let body: Value = serde_json::from_str(&response[json_start..]).unwrap();
    let trace_id = body["data"]["createOrder"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();

    // wss://…/graphql/realtime: the AppSync protocol over the same certificate.
    let stream = tls_connect(app.addr, &trusted).await;
    let mut req = format!("wss://{}/graphql/realtime", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    req.headers_mut()
        .insert("x-api-key", ALICE.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({ "type": "connection_init" })))
        .await
        .unwrap();
    ws.send(send(json!({ "id": "1", "type": "start", "payload": {
        "data": json!({ "query": SUBSCRIBE, "variables": { "t": trace_id } }).to_string() } })))
        .await
        .unwrap();
    let mut types = Vec::new();
    while types.last().map(String::as_str) != Some("start_ack") {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("the socket ended after {types:?}")
        };
        let frame: Value = serde_json::from_str(t.as_str()).unwrap();
        types.push(frame["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(types, ["connection_ack", "ka", "start_ack"]);

    // Plain HTTP on the TLS port is not served.
    let mut plain = TcpStream::connect(app.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was answered"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_self_signed_certificate_is_generated_for_localhost() {
    let app = TestApp::spawn_with(|c| c.tls_self_signed = true).await;
    // The client trusts nothing: the handshake must fail on the certificate, which proves a
    // TLS server is there and that it is not the one from PEM files.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let err = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    app.stop().await;
}
