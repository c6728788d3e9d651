//! Subscriptions over WebSocket: `graphql-transport-ws` and the legacy
//! `subscriptions-transport-ws` (subprotocol `graphql-ws`), served by async-graphql's protocol
//! engine with tether's own socket around it:
//!
//! * buffers sized per connection (the stock read buffer is 128 KiB; thousands of idle
//!   subscribers would pay that each),
//! * authentication from the upgrade's `x-api-key` header or the `connection_init` payload,
//! * a connection-init timeout, a cap on subscriptions per connection, and a clean close at
//!   shutdown.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::WebSocketProtocols;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt, future};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use crate::domain::Principal;

/// Outgoing frames waiting for the socket, per connection. A futures channel allocates per
/// queued frame; tokio's would hold a block of 32 frames (~1.5 KiB) for every idle socket.
const OUTGOING: usize = 16;

pub async fn upgrade(app: ApiState, parts: &mut Parts, upgrade: WebSocketUpgrade) -> Response {
    let protocol = match GraphQLProtocol::from_request_parts(parts, &()).await {
        Ok(p) => p,
        Err(rejection) => return rejection.into_response(),
    };
    let header_principal = app.auth.from_headers(&parts.headers);
    let legacy = parts
        .headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.contains(WebSocketProtocols::GraphQLWS.sec_websocket_protocol()));
    upgrade
        .protocols(["graphql-transport-ws", "graphql-ws"])
        .read_buffer_size(app.limits.ws_read_buffer)
        .write_buffer_size(0)
        .max_message_size(app.limits.max_body_bytes)
        .on_upgrade(move |socket| serve(app, socket, protocol, legacy, header_principal))
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// Subscription ids this connection has running.
#[derive(Default)]
struct Active {
    ids: HashSet<String>,
    initialised: bool,
}

async fn serve(
    app: ApiState,
    socket: WebSocket,
    protocol: GraphQLProtocol,
    legacy: bool,
    header_principal: Option<Principal>,
) {
    let (mut socket_tx, socket_rx) = socket.split();
    let (mut out_tx, mut out_rx) = mpsc::channel::<Message>(OUTGOING);
    let active = Arc::new(Mutex::new(Active::default()));
    let cap = app.limits.max_subscriptions_per_connection;

    // Client → engine: track subscription ids; refuse the one past the cap.
    let incoming = {
        let active = active.clone();
        let mut out_tx = out_tx.clone();
        socket_rx.filter_map(move |msg| {
            let pass = match &msg {
                Ok(Message::Text(text)) => admit(&active, &mut out_tx, text.as_str(), cap, legacy),
                _ => true,
            };
            future::ready(pass.then_some(msg))
        })
    };
    // Engine → client: forget ids the server completed.
    let outgoing = {
        let active = active.clone();
        out_tx.clone().with(move |mut msg: Message| {
            // async-graphql closes a refused connection_init with 1002; graphql-transport-ws
            // says 4403 Forbidden.
            if let Message::Close(Some(frame)) = &mut msg
                && frame.code == 1002
                && frame.reason.starts_with("Unauthorized")
            {
                frame.code = 4403;
                frame.reason = "Forbidden".into();
            }
            if let Message::Text(text) = &msg {
                let t = text.as_str();
                if (t.starts_with("{\"type\":\"complete\"") || t.starts_with("{\"type\":\"error\""))
                    && let Ok(frame) = serde_json::from_str::<Frame>(t)
                    && let Some(id) = frame.id
                {
                    lock(&active).ids.remove(&id);
                }
            }
            future::ready(Ok::<_, mpsc::SendError>(msg))
        })
    };

    let auth = app.auth.clone();
    let engine = GraphQLWebSocket::new_with_pair(outgoing, incoming, app.schema.clone(), protocol)
        .on_connection_init(move |payload| async move {
            let principal = header_principal.or_else(|| auth.from_init_payload(&payload));
            match principal {
                Some(p) => {
                    let mut data = Data::default();
                    data.insert(p);
                    Ok(data)
                }
                None => Err(async_graphql::Error::new(
                    "Unauthorized: a valid x-api-key is required",
                )),
            }
        })
        .serve();

    let writer = async {
        while let Some(msg) = out_rx.next().await {
            if socket_tx.send(msg).await.is_err() {
                break;
            }
        }
    };

    let init_timeout = {
        let active = active.clone();
        let after = Duration::from_millis(app.limits.connection_init_timeout_ms);
        async move {
            tokio::time::sleep(after).await;
            if !lock(&active).initialised {
                return;
            }
            future::pending::<()>().await
        }
    };

    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    tokio::select! {
        _ = engine => {}
        _ = init_timeout => { let _ = out_tx.send(close(4408, "Connection initialisation timeout")).await; }
        _ = app.shutdown.cancelled() => { let _ = out_tx.send(close(1001, "server shutting down")).await; }
        _ = writer => return,
    }
    drop(out_tx);
    // Flush what is queued (a close frame, the last data) before the socket goes.
    tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(msg) = out_rx.next().await {
            if socket_tx.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
    .ok();
}

fn lock(active: &Mutex<Active>) -> std::sync::MutexGuard<'_, Active> {
    active.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bookkeeping for one client frame; false drops it (after answering with an error).
fn admit(
    active: &Mutex<Active>,
    out: &mut mpsc::Sender<Message>,
    text: &str,
    cap: usize,
    legacy: bool,
) -> bool {
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return true;
    };
    let mut active = lock(active);
    match (frame.kind.as_str(), frame.id) {
        ("connection_init", _) => active.initialised = true,
        ("subscribe" | "start", Some(id)) => {
            if !active.ids.contains(&id) && active.ids.len() >= cap {
                let message = format!("at most {cap} subscriptions per connection");
                let error = json!({ "message": message, "extensions": { "errorType": "MaxSubscriptionsReachedError" } });
                let payload = if legacy { error } else { json!([error]) };
                let frame = json!({ "type": "error", "id": id, "payload": payload });
                let _ = out.try_send(Message::Text(frame.to_string().into()));
                return false;
            }
            active.ids.insert(id);
        }
        ("complete" | "stop", Some(id)) => {
            active.ids.remove(&id);
        }
        _ => {}
    }
    true
}
