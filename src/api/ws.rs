//! Subscriptions over WebSocket: three protocols, one engine.
//!
//! * `graphql-transport-ws` on `/graphql` (what the `graphql-ws` npm library speaks);
//! * Apollo's legacy `subscriptions-transport-ws` on `/graphql` (subprotocol `graphql-ws`);
//! * AppSync's real-time protocol on `/graphql/realtime`, the URL AppSync clients derive from
//!   `…/graphql` (also subprotocol `graphql-ws`, but with `start_ack`, `ka`, `payload.data` as
//!   a JSON string and authorization header objects; see `reference/appsync.md` §1).
//!
//! A connection is one task and owns its socket: it reads frames, starts subscriptions through
//! [`LiveSchema::prepare`] (async-graphql validates and authorises once, concurrently with
//! other frames), forwards what the hub delivers and sends keep-alives. No writer task and no
//! channel per connection: thousands of idle subscribers stay cheap. A client that stops
//! reading is closed after [`WRITE_TIMEOUT`]; meanwhile its hub buffers fill and the hub drops
//! its subscriptions (G8).
//!
//! Authorization: the handshake's credentials (HTTP headers, the AppSync header object, or
//! the `connection_init` payload) are the connection's; an AppSync `start` may carry its own
//! in `extensions.authorization`, checked in the start's preparation task (a JWKS read never
//! blocks the connection). A subscription whose token expires is ended with an
//! `UnauthorizedException` ("Token has expired.") at its `exp`.
//!
//! Limits: subscriptions per connection, the time to `connection_init`, the connection's
//! lifetime, the size of an incoming frame. Oversized payloads are not delivered (the hub's
//! 240 KB cap, as on AppSync).
//!
//! [`LiveSchema::prepare`]: crate::schema::live::LiveSchema::prepare

use std::collections::HashMap;
use std::time::Duration;

use async_graphql::{Request, ServerError};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamMap;

use super::ApiState;
use super::auth::{Denied, Headers, Signed};
use super::http::appsync_shape;
use crate::domain::{AuthMode, Identity, Millis, now_millis};
use crate::schema::live::{Delivery, Live, Prepared};

/// A client that has not taken a frame for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws`.
    TransportWs,
    /// `subscriptions-transport-ws`, subprotocol `graphql-ws`.
    Legacy,
    /// AppSync real-time, subprotocol `graphql-ws` on `…/realtime`.
    AppSync,
}

/// `GET /graphql` and `GET /graphql/realtime` with an upgrade.
pub async fn upgrade(
    app: ApiState,
    parts: &Parts,
    upgrade: WebSocketUpgrade,
    realtime: bool,
) -> Response {
    let offered: Vec<&str> = upgrade
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .collect();
    // AppSync clients send their authorization header object as a second subprotocol
    // (`header-<base64url>`) or, older ones, as the `header` query parameter.
    let header_object = offered
        .iter()
        .find_map(|p| p.strip_prefix("header-"))
        .map(str::to_owned)
        .or_else(|| query_param(parts.uri.query().unwrap_or(""), "header"))
        .and_then(|encoded| decode_header_object(&encoded));
    let protocol = if realtime || header_object.is_some() {
        Protocol::AppSync
    } else if offered.contains(&"graphql-ws") && !offered.contains(&"graphql-transport-ws") {
        Protocol::Legacy
    } else {
        Protocol::TransportWs
    };
    // The GraphQL path the client derived this URL from: what IAM signatures cover.
    let path = parts.uri.path();
    let gql_path: Box<str> = path.strip_suffix("/realtime").unwrap_or(path).into();
    let headers = match &header_object {
        Some(object) => Headers::from_object(object),
        None => Headers::from_http(&parts.headers),
    };
    // An IAM handshake signs `POST <graphql path>/connect` with the body `{}`.
    let connect = format!("{gql_path}/connect");
    let signed = Signed {
        path: &connect,
        body: b"{}",
    };
    let handshake = app.auth.authenticate(&headers, Some(signed)).await;
    let limits = app.limits.clone();
    upgrade
        .protocols(["graphql-transport-ws", "graphql-ws"])
        .read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(0)
        .max_message_size(limits.max_body_bytes)
        .on_upgrade(move |socket| serve(app, socket, protocol, gql_path, handshake))
}

/// The `name` parameter of a query string, percent-decoded. A `+` stays a `+`: hand-written
/// clients put raw base64 there.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// base64 or base64url, padded or not (and a `+` that form decoding turned into a space).
fn decode_header_object(encoded: &str) -> Option<Value> {
    let normal: String = encoded
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            ' ' => '+',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(normal)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    #[serde(default)]
    payload: Value,
}

/// A started subscription, query or mutation, back from its preparation.
struct Started {
    id: Box<str>,
    generation: u64,
    outcome: Outcome,
}

enum Outcome {
    /// A subscription, and when its credentials expire.
    Live(Live, Option<Millis>),
    /// A query or mutation's response (`graphql-transport-ws` and legacy only).
    Response(Value),
    Failed(Vec<Value>),
}

struct Conn {
    app: ApiState,
    protocol: Protocol,
    /// The GraphQL path (`/graphql`): a `start`'s IAM signature covers it.
    gql_path: Box<str>,
    /// From the handshake (headers, AppSync header object); `connection_init` may add it.
    handshake: Result<Identity, Denied>,
    /// Set by a successful `connection_init` (or an AppSync `start` after an authorised
    /// handshake): the connection's caller.
    identity: Option<Identity>,
    subs: StreamMap<Box<str>, Live>,
    /// When each subscription's credentials expire (JWT `exp`).
    expiries: HashMap<Box<str>, Millis>,
    /// `expiries` changed: the expiry timer needs resetting.
    expiries_changed: bool,
    /// Subscriptions being prepared, by id; the generation tells a `stop`ped one from a new
    /// one with the same id. Each preparation is its own task (it holds a server-wide permit,
    /// so it must progress whatever this connection does) and is aborted by a `stop`.
    pending_ids: HashMap<Box<str>, (u64, AbortHandle)>,
    pending: FuturesUnordered<JoinHandle<Started>>,
    generation: u64,
    /// Frames to send, in order, before the next read.
    out: Vec<Message>,
    /// Close the connection after `out` is sent.
    close: Option<(u16, String)>,
}

async fn serve(
    app: ApiState,
    mut socket: WebSocket,
    protocol: Protocol,
    gql_path: Box<str>,
    handshake: Result<Identity, Denied>,
) {
    let limits = app.limits.clone();
    let shutdown = app.shutdown.clone();
    let mut conn = Conn {
        app,
        protocol,
        gql_path,
        handshake,
        identity: None,
        subs: StreamMap::new(),
        expiries: HashMap::new(),
        expiries_changed: false,
        pending_ids: HashMap::new(),
        pending: FuturesUnordered::new(),
        generation: 0,
        out: Vec::new(),
        close: None,
    };
    // Before `connection_init`: the init timeout; after it: the connection's lifetime.
    let mut deadline: std::pin::Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(
        Duration::from_millis(limits.connection_init_timeout_ms),
    ));
    let keepalive = Duration::from_millis(limits.keepalive_ms.max(1));
    let mut next_ka: std::pin::Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(keepalive));
    let sends_ka = protocol != Protocol::TransportWs && limits.keepalive_ms > 0;
    let mut next_expiry: std::pin::Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(keepalive));
    loop {
        let was_initialised = conn.identity.is_some();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => conn.close_with(1001, "server shutting down"),
            _ = &mut deadline => {
                if was_initialised {
                    conn.close_with(1000, "connection lifetime reached; reconnect");
                } else {
                    conn.close_with(4408, "Connection initialisation timeout");
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => conn.invalid("binary frames are not supported"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            // Before deliveries: a busy subscription must not outrun its token's expiry.
            _ = &mut next_expiry, if !conn.expiries.is_empty() => conn.expire(now_millis()),
            Some(started) = conn.pending.next(), if !conn.pending.is_empty() => {
                if let Ok(started) = started {
                    conn.on_started(started);
                }
            }
            Some((id, delivery)) = conn.subs.next(), if !conn.subs.is_empty() => conn.on_delivery(&id, delivery),
            _ = &mut next_ka, if sends_ka && was_initialised => {
                next_ka.as_mut().reset(Instant::now() + keepalive);
                conn.text(json!({ "type": "ka" }));
            }
        }
        if conn.expiries_changed {
            conn.expiries_changed = false;
            if let Some(first) = conn.expiries.values().min() {
                let wait = (first - now_millis()).max(0) as u64;
                next_expiry
                    .as_mut()
                    .reset(Instant::now() + Duration::from_millis(wait));
            }
        }
        if !was_initialised && conn.identity.is_some() {
            deadline
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(limits.connection_lifetime_ms));
            next_ka.as_mut().reset(Instant::now() + keepalive);
        }
        for msg in conn.out.drain(..) {
            match tokio::time::timeout(WRITE_TIMEOUT, socket.send(msg)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        if let Some((code, reason)) = conn.close.take() {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
            return;
        }
    }
}

impl Conn {
    fn text(&mut self, frame: Value) {
        self.out.push(Message::Text(frame.to_string().into()));
    }

    fn close_with(&mut self, code: u16, reason: impl Into<String>) {
        // A close frame's reason holds at most 123 bytes; ids and types come from the client.
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut end = 120;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        self.close = Some((code, reason));
    }

    /// A frame the protocol does not allow.
    fn invalid(&mut self, what: &str) {
        match self.protocol {
            Protocol::TransportWs => self.close_with(4400, what),
            Protocol::Legacy => {
                self.text(json!({ "type": "error", "payload": { "message": what } }))
            }
            Protocol::AppSync => self.text(json!({ "type": "error", "payload": { "errors": [
                { "errorType": "UnsupportedOperation", "message": what } ] } })),
        }
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(_) => return self.invalid("the frame is not a JSON object with a `type`"),
        };
        use Protocol::*;
        match (self.protocol, frame.kind.as_str()) {
            (_, "connection_init") => self.init(&frame.payload).await,
            (TransportWs, "ping") => self.text(json!({ "type": "pong" })),
            (TransportWs, "pong") => {}
            (TransportWs, "subscribe") | (Legacy | AppSync, "start") => {
                self.start(frame.id, frame.payload)
            }
            (TransportWs, "complete") | (Legacy | AppSync, "stop") => match frame.id {
                Some(id) => self.stop(&id),
                None => self.invalid("the frame needs an `id`"),
            },
            (Legacy, "connection_terminate") => self.close_with(1000, "terminated"),
            (_, other) => {
                let what = format!("`{other}` is not a message of this protocol");
                self.invalid(&what)
            }
        }
    }

    async fn init(&mut self, payload: &Value) {
        if self.identity.is_some() {
            if self.protocol == Protocol::TransportWs {
                self.close_with(4429, "Too many initialisation requests");
            }
            return;
        }
        let identity = match (self.protocol, &self.handshake) {
            (Protocol::AppSync, handshake) | (_, handshake @ Ok(_)) => handshake.clone(),
            // Other protocols carry their credentials in the `connection_init` payload.
            _ => {
                let headers = Headers::from_init_payload(payload);
                self.app.auth.authenticate(&headers, None).await
            }
        };
        let identity = match identity {
            Ok(identity) if !identity.expired(now_millis()) => identity,
            Ok(_) => return self.refuse_connection(Denied::Expired),
            Err(denied) => return self.refuse_connection(denied),
        };
        self.identity = Some(identity);
        match self.protocol {
            Protocol::TransportWs => self.text(json!({ "type": "connection_ack" })),
            Protocol::Legacy => {
                self.text(json!({ "type": "connection_ack" }));
                self.text(json!({ "type": "ka" }));
            }
            Protocol::AppSync => {
                let timeout = 300_000.max(self.app.limits.keepalive_ms * 2);
                self.text(json!({ "type": "connection_ack", "payload": { "connectionTimeoutMs": timeout } }));
                self.text(json!({ "type": "ka" }));
            }
        }
    }

    fn refuse_connection(&mut self, denied: Denied) {
        match self.protocol {
            Protocol::TransportWs => self.close_with(4403, "Forbidden"),
            Protocol::Legacy => {
                self.text(json!({ "type": "connection_error", "payload": {
                    "message": denied.message() } }));
                self.close_with(4403, "Forbidden");
            }
            Protocol::AppSync => {
                self.text(
                    json!({ "type": "connection_error", "payload": { "errors": [{
                    "errorType": "UnauthorizedException",
                    "message": denied.message(),
                    "errorCode": 401 }] } }),
                );
                self.close_with(4401, "Unauthorized");
            }
        }
    }

    /// An error for one subscription id, in the protocol's shape.
    fn fail(&mut self, id: &str, errors: Vec<Value>) {
        let payload = match self.protocol {
            Protocol::TransportWs => Value::Array(errors),
            Protocol::Legacy => errors.into_iter().next().unwrap_or(Value::Null),
            Protocol::AppSync => {
                let shaped = appsync_shape(json!({ "errors": errors }));
                json!({ "errors": shaped["errors"] })
            }
        };
        self.text(json!({ "type": "error", "id": id, "payload": payload }));
    }

    fn start(&mut self, id: Option<String>, payload: Value) {
        let Some(id) = id else {
            return self.invalid("`subscribe`/`start` needs an `id`");
        };
        // AppSync needs no `connection_init` when the handshake carried the authorization.
        if self.identity.is_none() && self.protocol == Protocol::AppSync {
            self.identity = self.handshake.clone().ok();
        }
        let Some(connection_identity) = self.identity.clone() else {
            return match self.protocol {
                Protocol::TransportWs => self.close_with(4401, "Unauthorized"),
                _ => self.refuse_connection(
                    self.handshake.clone().err().unwrap_or(Denied::Unauthorized),
                ),
            };
        };
        if self.subs.contains_key(id.as_str()) || self.pending_ids.contains_key(id.as_str()) {
            return match self.protocol {
                Protocol::TransportWs => {
                    self.close_with(4409, format!("Subscriber for {id} already exists"))
                }
                _ => self.fail(
                    &id,
                    vec![error(
                        "DuplicatedOperationError",
                        "a subscription with this id is already running on this connection",
                    )],
                ),
            };
        }
        let cap = self.app.limits.max_subscriptions_per_connection;
        if self.subs.len() + self.pending_ids.len() >= cap {
            let message = format!("at most {cap} subscriptions per connection");
            return self.fail(&id, vec![error("MaxSubscriptionsReachedError", &message)]);
        }
        // AppSync: `payload.data` is the request as a JSON string and each start carries its
        // own authorization. The others (and tolerant AppSync clients): `payload` is the request.
        let data = payload.get("data").and_then(Value::as_str);
        let request = match data {
            Some(data) => serde_json::from_str::<Request>(data),
            None => serde_json::from_value::<Request>(payload.clone()),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let message = format!("the payload is not a GraphQL request: {e}");
                let kind = match self.protocol {
                    Protocol::AppSync => "UnsupportedOperation",
                    _ => "BadRequestException",
                };
                return self.fail(&id, vec![error(kind, &message)]);
            }
        };
        // The start's own credentials, checked in its task; an IAM signature covers
        // `POST <graphql path>` with `payload.data` as the body.
        let own_auth = match payload.pointer("/extensions/authorization") {
            Some(object) if self.protocol == Protocol::AppSync => Some((
                Headers::from_object(object),
                data.map(str::to_owned),
                self.gql_path.clone(),
            )),
            // An IAM handshake's signature covers only `…/connect` and `{}`: anyone who saw it
            // could replay it for minutes. Each start of such a connection signs its own
            // request, as AppSync clients do.
            _ if connection_identity.mode == AuthMode::Iam => {
                let denied = Denied::Unauthorized;
                return self.fail(&id, vec![error("UnauthorizedException", denied.message())]);
            }
            _ => None,
        };
        self.generation += 1;
        let generation = self.generation;
        let id: Box<str> = id.into();
        let live = self.app.live.clone();
        let appsync = self.protocol == Protocol::AppSync;
        let auth = self.app.auth.clone();
        let task = tokio::spawn({
            let id = id.clone();
            async move {
                let identity = match own_auth {
                    Some((headers, body, path)) => {
                        // Without `payload.data` there is no body an IAM signature covers.
                        let signed = body.as_deref().map(|body| Signed {
                            path: &path,
                            body: body.as_bytes(),
                        });
                        auth.authenticate(&headers, signed).await
                    }
                    None => Ok(connection_identity),
                };
                let identity = match identity {
                    Ok(identity) if identity.expired(now_millis()) => Err(Denied::Expired),
                    other => other,
                };
                let identity = match identity {
                    Ok(identity) => identity,
                    Err(denied) => {
                        let errors = vec![error("UnauthorizedException", denied.message())];
                        return Started {
                            id,
                            generation,
                            outcome: Outcome::Failed(errors),
                        };
                    }
                };
                let expires_at = identity.expires_at;
                let outcome = match live.prepare(request, &identity).await {
                    Ok(Prepared::Live(l)) => Outcome::Live(l, expires_at),
                    Ok(Prepared::Operation(_)) if appsync => Outcome::Failed(vec![error(
                        "UnsupportedOperation",
                        "queries and mutations are not supported through the realtime channel; send them over HTTP",
                    )]),
                    Ok(Prepared::Operation(request)) => {
                        let response = live.schema().execute(*request).await;
                        Outcome::Response(serde_json::to_value(&response).unwrap_or(Value::Null))
                    }
                    Err(errors) => Outcome::Failed(errors.into_iter().map(server_error).collect()),
                };
                Started {
                    id,
                    generation,
                    outcome,
                }
            }
        });
        self.pending_ids
            .insert(id, (generation, task.abort_handle()));
        self.pending.push(task);
    }

    fn on_started(&mut self, started: Started) {
        if self.pending_ids.get(&started.id).map(|p| p.0) != Some(started.generation) {
            return; // stopped while it was being prepared
        }
        self.pending_ids.remove(&started.id);
        let id = started.id;
        match started.outcome {
            Outcome::Live(live, expires_at) => {
                if self.protocol == Protocol::AppSync {
                    self.text(json!({ "type": "start_ack", "id": id }));
                }
                if let Some(at) = expires_at {
                    self.expiries.insert(id.clone(), at);
                    self.expiries_changed = true;
                }
                self.subs.insert(id, live);
            }
            Outcome::Response(response) => {
                self.item(&id, response);
                self.text(json!({ "type": "complete", "id": id }));
            }
            Outcome::Failed(errors) => self.fail(&id, errors),
        }
    }

    /// One GraphQL response for subscription `id`.
    fn item(&mut self, id: &str, payload: Value) {
        let kind = match self.protocol {
            Protocol::TransportWs => "next",
            _ => "data",
        };
        let payload = match self.protocol {
            Protocol::AppSync => appsync_shape(payload),
            _ => payload,
        };
        self.text(json!({ "type": kind, "id": id, "payload": payload }));
    }

    fn on_delivery(&mut self, id: &str, delivery: Delivery) {
        if self.expiries.get(id).is_some_and(|at| now_millis() >= *at) {
            return self.expire(now_millis());
        }
        match delivery {
            Delivery::Item(payload) => self.item(id, payload),
            Delivery::Overflow(payload) => {
                self.subs.remove(id);
                self.forget_expiry(id);
                match self.protocol {
                    Protocol::AppSync => {
                        let errors = payload["errors"].as_array().cloned().unwrap_or_default();
                        self.fail(id, errors);
                    }
                    _ => {
                        self.item(id, payload);
                        self.text(json!({ "type": "complete", "id": id }));
                    }
                }
            }
        }
    }

    fn stop(&mut self, id: &str) {
        let preparing = self.pending_ids.remove(id);
        if let Some((_, task)) = &preparing {
            task.abort();
        }
        let known = self.subs.remove(id).is_some() || preparing.is_some();
        self.forget_expiry(id);
        // graphql-transport-ws: the client's `complete` needs no answer.
        if self.protocol != Protocol::TransportWs && known {
            self.text(json!({ "type": "complete", "id": id }));
        }
    }
}

impl Conn {
    fn forget_expiry(&mut self, id: &str) {
        if self.expiries.remove(id).is_some() {
            self.expiries_changed = true;
        }
    }

    /// Ends every subscription whose credentials expired by `now`: nothing more is delivered
    /// to it, and the client is told why (AppSync's "Token has expired.").
    fn expire(&mut self, now: Millis) {
        let expired: Vec<Box<str>> = self
            .expiries
            .iter()
            .filter(|(_, at)| now >= **at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.expiries.remove(&id);
            if self.subs.remove(&id).is_none() {
                continue; // it had ended already
            }
            let denied = Denied::Expired;
            self.fail(&id, vec![error("UnauthorizedException", denied.message())]);
            if self.protocol == Protocol::Legacy {
                self.text(json!({ "type": "complete", "id": id }));
            }
        }
        self.expiries_changed = true;
    }
}

fn error(error_type: &str, message: &str) -> Value {
    json!({ "message": message, "extensions": { "errorType": error_type } })
}

fn server_error(e: ServerError) -> Value {
    serde_json::to_value(&e).unwrap_or_else(|_| json!({ "message": e.message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_objects_decode_from_every_base64_spelling() {
        let object = json!({ "host": "127.0.0.1:4000", "x-api-key": "k+/?" });
        let text = object.to_string();
        let engines = [
            base64::engine::general_purpose::STANDARD.encode(&text),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&text),
            base64::engine::general_purpose::STANDARD
                .encode(&text)
                .replace('+', " "),
        ];
        for encoded in engines {
            assert_eq!(
                decode_header_object(&encoded),
                Some(object.clone()),
                "{encoded}"
            );
        }
        assert_eq!(decode_header_object("not base64!"), None);
        let plain = base64::engine::general_purpose::STANDARD.encode("[1]");
        assert_eq!(decode_header_object(&plain), None, "not an object");
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&header=ab%3D%3D&payload=e30=", "header").as_deref(),
            Some("ab==")
        );
        assert_eq!(
            query_param("header=a+b%", "header").as_deref(),
            Some("a+b%")
        );
        assert_eq!(query_param("x=1", "header"), None);
    }
}
