//! `POST /graphql`, GraphiQL and `/health`.
//!
//! Errors leave in AppSync's shape: `{"errors":[{"errorType": …, "message": …}]}`. Request-level
//! failures (no or wrong API key, malformed JSON, body too large, batch too big) get an HTTP
//! status; everything GraphQL answers is 200.

use std::borrow::Cow;

use async_graphql::{BatchRequest, Request};
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::auth::{Denied, Headers, Signed};
use crate::domain::Identity;
use crate::schema::errors::kind;
use crate::schema::{Answer, Direct};

/// An error response in AppSync's shape. The `x-amzn-ErrorType` header is where AWS clients
/// (Amplify's error parser) look for the error's name.
fn reject(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let body = json!({ "errors": [{ "errorType": error_type, "message": message }] });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("x-amzn-errortype"),
                error_type,
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

pub fn unauthorized(denied: Denied) -> Response {
    reject(
        StatusCode::UNAUTHORIZED,
        "UnauthorizedException",
        denied.message(),
    )
}

pub async fn graphql_post(
    State(app): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let credentials = Headers::from_http(&headers);
    // An IAM signature covers the body, so those requests are read first; every other caller
    // is authenticated before tether reads a byte of what it sent.
    let signed_v4 = credentials
        .get("authorization")
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"));
    let early = match signed_v4 {
        true => None,
        false => match app.auth.authenticate(&credentials, None).await {
            Ok(identity) => Some(identity),
            Err(denied) => return unauthorized(denied),
        },
    };
    let Ok(bytes) = to_bytes(body, app.limits.max_body_bytes).await else {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            &format!(
                "the request body exceeds {} bytes",
                app.limits.max_body_bytes
            ),
        );
    };
    let identity = match early {
        Some(identity) => identity,
        None => {
            let signed = Signed {
                path: uri.path(),
                body: &bytes,
            };
            match app.auth.authenticate(&credentials, Some(signed)).await {
                Ok(identity) => identity,
                Err(denied) => return unauthorized(denied),
            }
        }
    };
    if let Some(direct) = &app.direct
        && let Some(answer) = answer_directly(&app, direct, &identity, &bytes).await
    {
        return answer;
    }
    let batch: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(batch) => batch,
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "MalformedHttpRequestException",
                &format!(
                    "the body is not a GraphQL request: {}",
                    first_line(&e.to_string())
                ),
            );
        }
    };
    let requests: Vec<Request> = match batch {
        BatchRequest::Single(r) => vec![r],
        BatchRequest::Batch(rs) if rs.is_empty() => {
            return reject(
                StatusCode::BAD_REQUEST,
                "BadRequestException",
                "an empty batch has nothing to run",
            );
        }
        BatchRequest::Batch(rs) if rs.len() > app.limits.max_batch => {
            return reject(
                StatusCode::BAD_REQUEST,
                "BadRequestException",
                &format!("a batch holds at most {} operations", app.limits.max_batch),
            );
        }
        BatchRequest::Batch(rs) => rs,
    };
    let single = requests.len() == 1 && !bytes.trim_ascii_start().starts_with(b"[");
    let mut out = Vec::with_capacity(requests.len());
    for mut request in requests {
        let kept = app.documents.prepare(&mut request);
        let operation_name = request.operation_name.clone();
        let request = request
            .data(identity.principal.clone())
            .data(identity.clone());
        let response = app.schema.execute(request).await;
        if let (Some(kept), Some(direct)) = (kept, &app.direct)
            && response.errors.is_empty()
        {
            kept.learn(direct.schema(), operation_name.as_deref());
        }
        if single && response.errors.is_empty() {
            // Nothing to reshape: written straight out.
            let body = serde_json::to_string(&response).unwrap_or_else(|_| "null".into());
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        out.push(appsync_shape(
            serde_json::to_value(&response).unwrap_or(Value::Null),
        ));
    }
    let body = if single {
        out.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(out)
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A single GraphQL request over HTTP, as far as the direct path reads one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Single<'a> {
    #[serde(borrow)]
    query: Cow<'a, str>,
    #[serde(borrow, default)]
    operation_name: Option<Cow<'a, str>>,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    extensions: Option<Map<String, Value>>,
}

/// Answers a single request whose text has a direct plan (`schema::direct`) without the
/// general executor; `None` sends it the general way.
async fn answer_directly(
    app: &ApiState,
    direct: &Direct,
    identity: &Identity,
    bytes: &[u8],
) -> Option<Response> {
    let single: Single = serde_json::from_slice(bytes).ok()?;
    if single.extensions.as_ref().is_some_and(|e| !e.is_empty()) {
        return None;
    }
    let kept = app.documents.kept(&single.query)?;
    let plan = kept.plan()?;
    let none = Map::new();
    let variables = single.variables.as_ref().unwrap_or(&none);
    let body = match direct
        .run(plan, identity, single.operation_name.as_deref(), variables)
        .await
    {
        Answer::Data(body) => body,
        Answer::Failed(response) => {
            appsync_shape(serde_json::to_value(&response).unwrap_or(Value::Null)).to_string()
        }
        Answer::General => return None,
    };
    Some(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Moves `extensions.errorType` (and `errorInfo`) to the top level of each error, where AppSync
/// puts them; errors raised before execution (parse, validation, limits) are `ValidationError`.
pub fn appsync_shape(mut response: Value) -> Value {
    if let Some(errors) = response.get_mut("errors").and_then(Value::as_array_mut) {
        for error in errors {
            let Some(obj) = error.as_object_mut() else {
                continue;
            };
            let ext = obj.get_mut("extensions").and_then(Value::as_object_mut);
            let (error_type, info) = match ext {
                Some(ext) => (ext.remove("errorType"), ext.remove("errorInfo")),
                None => (None, None),
            };
            if obj
                .get("extensions")
                .and_then(Value::as_object)
                .is_some_and(|e| e.is_empty())
            {
                obj.remove("extensions");
            }
            let error_type =
                error_type.or_else(|| (!obj.contains_key("path")).then(|| json!(kind::VALIDATION)));
            if let Some(t) = error_type {
                obj.insert("errorType".into(), t);
            }
            if let Some(info) = info {
                obj.insert("errorInfo".into(), info);
            }
        }
    }
    response
}

/// `GET /graphql`: a WebSocket upgrade for subscriptions, GraphiQL otherwise.
pub async fn graphql_get(State(app): State<ApiState>, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
        Ok(upgrade) => super::ws::upgrade(app, &parts, upgrade, false).await,
        Err(_) if parts.headers.contains_key(header::UPGRADE) => reject(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "invalid WebSocket upgrade request",
        ),
        Err(_) => graphiql().await.into_response(),
    }
}

/// `GET /graphql/realtime`: AppSync's real-time WebSocket.
pub async fn realtime_get(
    State(app): State<ApiState>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &app).await {
        Ok(upgrade) => super::ws::upgrade(app, &parts, upgrade, true).await,
        Err(_) => reject(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "this endpoint takes WebSocket upgrades (subprotocol graphql-ws) only",
        ),
    }
}

pub async fn graphiql() -> Html<&'static str> {
    Html(include_str!("graphiql.html"))
}

pub async fn health(State(app): State<ApiState>) -> Response {
    let (delivered, dropped) = app.hub.stats();
    let store_ok = app.store.ping().await.is_ok();
    let body = json!({
        "status": if store_ok { "ok" } else { "degraded" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "subscribers": app.hub.subscriber_count(),
        "delivered": delivered,
        "droppedSlowSubscribers": dropped,
        "executor": app.stats.to_json(),
        "directAnswers": app.direct.as_ref().map_or(0, |d| d.answered()),
    });
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
