//! The built-in resolvers, bound to root fields by name: the trace queries, the commands,
//! `publishTraceEvent`, `replayDeadLetter`, and the `@aws_subscribe` subscriptions.
//! Every resolver checks who is asking: traces belong to the principal that submitted them
//! (G7), and "not yours" gets the same answer as "not found".

use std::sync::Arc;

use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, ResolverContext, SubscriptionField, SubscriptionFieldFuture,
};
use async_graphql::{Error, ErrorExtensions};
use serde_json::{Value, json};

use super::build::{Services, type_ref};
use super::errors::{self, kind};
use super::live::{Slot, Target};
use super::values::{input_to_json, plain_json, project, to_gql};
use super::{SchemaDoc, SchemaError};
use crate::domain::{
    Accepted, DeadLetter, Principal, TraceEvent, TraceId, TraceRecord, aws_datetime,
};
use crate::hub::TRACE_EVENT_MUTATION;
use crate::pipeline::command_api::AcceptError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Query,
    Mutation,
    Subscription,
}

type FieldDef = async_graphql::parser::types::FieldDefinition;

fn services<'a>(ctx: &ResolverContext<'a>) -> Result<&'a Services, Error> {
    ctx.data::<Services>()
}

fn principal<'a>(ctx: &ResolverContext<'a>) -> Result<&'a Principal, Error> {
    ctx.data_opt::<Principal>().ok_or_else(|| {
        errors::error(
            "UnauthorizedException",
            "You are not authorized to make this call.",
        )
    })
}

fn arg_str<'a>(ctx: &'a ResolverContext<'_>, name: &str) -> Option<&'a str> {
    ctx.args.get(name).and_then(|v| v.string().ok())
}

fn arg_int(ctx: &ResolverContext<'_>, name: &str) -> Option<i64> {
    ctx.args.get(name).and_then(|v| v.i64().ok())
}

/// Loads a trace the caller may read; `None` for "not found" and "not yours" alike.
async fn readable_trace(
    s: &Services,
    who: &Principal,
    id: &str,
) -> Result<Option<TraceRecord>, Error> {
    let Some(trace_id) = TraceId::parse(id) else {
        return Ok(None);
    };
    let trace = s.store.trace(trace_id).await.map_err(errors::store)?;
    Ok(trace.filter(|t| who.may_read(&t.owner)))
}

fn ok(value: Value) -> Result<Option<FieldValue<'static>>, Error> {
    Ok(Some(FieldValue::value(to_gql(value))))
}

// --- Query ---------------------------------------------------------------------------------

pub fn query(f: &FieldDef) -> Result<Field, SchemaError> {
    let ty = type_ref(&f.ty.node);
    let name = f.name.node.as_str();
    Ok(match name {
        "trace" => Field::new(name, ty, |ctx| {
            FieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                let Some(trace) =
                    readable_trace(s, who, arg_str(&ctx, "traceId").unwrap_or("")).await?
                else {
                    return Ok(None);
                };
                let events = if ctx.look_ahead().field("events").exists() {
                    Some(
                        s.store
                            .trace_events(trace.trace_id, 0, s.limits.max_page)
                            .await
                            .map_err(errors::store)?,
                    )
                } else {
                    None
                };
                ok(trace_json(&trace, events.as_deref()))
            })
        }),
        "traceEvents" => Field::new(name, ty, |ctx| {
            FieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                let id = arg_str(&ctx, "traceId").unwrap_or("");
                let Some(trace) = readable_trace(s, who, id).await? else {
                    return Err(errors::not_found(id));
                };
                let after = arg_int(&ctx, "afterSeq").unwrap_or(0);
                let limit = page_limit(&ctx, s)?;
                let events = s
                    .store
                    .trace_events(trace.trace_id, after, limit)
                    .await
                    .map_err(errors::store)?;
                ok(Value::Array(
                    events.iter().map(TraceEvent::to_graphql).collect(),
                ))
            })
        }),
        "deadLetters" => Field::new(name, ty, |ctx| {
            FieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                let limit = page_limit(&ctx, s)?;
                let before =
                    match arg_str(&ctx, "nextToken") {
                        None => None,
                        Some(t) => Some(t.parse::<i64>().map_err(|_| {
                            errors::error(kind::VALIDATION, "nextToken is not valid")
                        })?),
                    };
                let owner = (!who.admin).then_some(who.id.as_str());
                let mut items = s
                    .store
                    .dead_letters(owner, before, limit + 1)
                    .await
                    .map_err(errors::store)?;
                let more = items.len() as i64 > limit;
                items.truncate(limit as usize);
                let next = if more {
                    items.last().map(|d| d.id.to_string())
                } else {
                    None
                };
                ok(
                    json!({ "items": items.iter().map(dead_letter_json).collect::<Vec<_>>(), "nextToken": next }),
                )
            })
        }),
        other => {
            return Err(SchemaError::Mismatch(format!(
                "Query.{other} has no built-in resolver"
            )));
        }
    })
}

fn page_limit(ctx: &ResolverContext<'_>, s: &Services) -> Result<i64, Error> {
    match arg_int(ctx, "limit") {
        None => Ok(s.limits.max_page.min(100)),
        Some(n) if (1..=s.limits.max_page).contains(&n) => Ok(n),
        Some(_) => Err(errors::error(
            kind::VALIDATION,
            format!("limit must be between 1 and {}", s.limits.max_page),
        )),
    }
}

fn trace_json(t: &TraceRecord, events: Option<&[TraceEvent]>) -> Value {
    json!({
        "traceId": t.trace_id.to_string(),
        "commandType": t.command_type,
        "state": t.state.as_str(),
        "attempts": t.attempts,
        "series": t.series,
        "createdAt": aws_datetime(t.created_at),
        "updatedAt": aws_datetime(t.updated_at),
        "result": t.result.as_ref().map(Value::to_string),
        "error": t.error,
        "events": events.map(|e| e.iter().map(TraceEvent::to_graphql).collect::<Vec<_>>()),
    })
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "traceId": d.trace_id.to_string(),
        "commandType": d.command_type,
        "payload": d.payload.to_string(),
        "attempts": d.attempts,
        "series": d.series,
        "history": d.history.to_string(),
        "lastError": d.last_error,
        "deadLetteredAt": aws_datetime(d.dead_lettered_at),
        "replayedAt": d.replayed_at.map(aws_datetime),
    })
}

// --- Mutation ------------------------------------------------------------------------------

pub(super) fn accepted_json(a: &Accepted) -> Value {
    json!({ "traceId": a.trace_id.to_string(), "status": "ACCEPTED", "acceptedAt": aws_datetime(a.accepted_at) })
}

pub(super) fn accept_error(e: AcceptError) -> Error {
    match e {
        AcceptError::Invalid(v) => {
            let field = v.field.clone();
            errors::error(kind::VALIDATION, v.message).extend_with(|_, ext| {
                if let Some(field) = &field {
                    ext.set(
                        "errorInfo",
                        async_graphql::Value::from_json(json!({ "field": field }))
                            .unwrap_or_default(),
                    );
                }
            })
        }
        AcceptError::NotFound(id) => errors::not_found(&id.to_string()),
        AcceptError::NotDeadLettered(id) => errors::error(
            kind::NOT_DEAD_LETTERED,
            format!("trace {id} is not dead-lettered"),
        ),
        AcceptError::Store(e) => errors::store(e),
    }
}

/// AppSync semantics: a mutation listed by an `@aws_subscribe` publishes its result, as its
/// caller selected it.
fn publish_result(s: &Services, ctx: &ResolverContext<'_>, mutation: &str, result: &Value) {
    if s.doc.routes().contains_key(mutation) {
        s.hub.publish(mutation, project(result, ctx.field()));
    }
}

/// A command field: its `input` argument is the payload (or all its arguments, when it has
/// no `input`), `idempotencyKey` is the dedup key.
pub fn command(f: &FieldDef) -> Field {
    let name = f.name.node.to_string();
    let args: Vec<(String, async_graphql::parser::types::Type)> = f
        .arguments
        .iter()
        .map(|a| (a.node.name.node.to_string(), a.node.ty.node.clone()))
        .filter(|(n, _)| n != "idempotencyKey")
        .collect();
    Field::new(f.name.node.as_str(), type_ref(&f.ty.node), move |ctx| {
        let name = name.clone();
        let args = args.clone();
        FieldFuture::new(async move {
            let s = services(&ctx)?;
            let who = principal(&ctx)?;
            let converted = |arg: &str, ty| {
                ctx.args
                    .get(arg)
                    .map(|v| input_to_json(&s.doc, ty, v.as_value()))
            };
            let payload = match args.iter().find(|(n, _)| n == "input") {
                Some((n, ty)) => converted(n, ty).unwrap_or(Value::Null),
                None => Value::Object(
                    args.iter()
                        .filter_map(|(n, ty)| converted(n, ty).map(|v| (n.clone(), v)))
                        .collect(),
                ),
            };
            let key = arg_str(&ctx, "idempotencyKey").map(str::to_owned);
            let accepted = s
                .commands
                .submit(who, &name, payload, key)
                .await
                .map_err(accept_error)?;
            let result = accepted_json(&accepted);
            publish_result(s, &ctx, &name, &result);
            ok(result)
        })
    })
}

pub fn mutation(f: &FieldDef) -> Result<Field, SchemaError> {
    let ty = type_ref(&f.ty.node);
    let name = f.name.node.as_str();
    Ok(match name {
        TRACE_EVENT_MUTATION => Field::new(name, ty, |ctx| {
            FieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                // Publishing is for workers and operators; clients only read their own traces.
                if !who.admin {
                    return Err(errors::unauthorized(TRACE_EVENT_MUTATION, "Mutation"));
                }
                let input = ctx.args.try_get("input")?;
                let result = plain_json(input.as_value());
                publish_result(s, &ctx, TRACE_EVENT_MUTATION, &result);
                ok(result)
            })
        }),
        "replayDeadLetter" => Field::new(name, ty, |ctx| {
            FieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                let id = arg_str(&ctx, "traceId").unwrap_or("");
                let Some(trace_id) = TraceId::parse(id) else {
                    return Err(errors::not_found(id));
                };
                let accepted = s
                    .commands
                    .replay(who, trace_id)
                    .await
                    .map_err(accept_error)?;
                let result = accepted_json(&accepted);
                publish_result(s, &ctx, "replayDeadLetter", &result);
                ok(result)
            })
        }),
        other => {
            return Err(SchemaError::Mismatch(format!(
                "Mutation.{other} is neither a command (returning CommandAccepted!) nor built in"
            )));
        }
    })
}

// --- Subscription --------------------------------------------------------------------------

/// A subscription fed by the hub. The resolver only checks and says what to subscribe to
/// (`onTraceEvent` checks that the caller may read the trace); the connection then subscribes
/// to the hub and projects what it brings (see `schema::live`).
pub fn subscription(doc: &SchemaDoc, f: &FieldDef) -> Result<SubscriptionField, SchemaError> {
    let name = f.name.node.to_string();
    let routed = doc.routes().values().any(|fields| fields.contains(&name));
    if !routed {
        return Err(SchemaError::Mismatch(format!(
            "Subscription.{name} has no @aws_subscribe(mutations: [...])"
        )));
    }
    // Every subscription fed by trace events is owner-checked and must name its trace.
    let owned = doc
        .routes()
        .get(TRACE_EVENT_MUTATION)
        .is_some_and(|f| f.contains(&name));
    let has_trace_arg = f
        .arguments
        .iter()
        .any(|a| a.node.name.node == "traceId" && !a.node.ty.node.nullable);
    if owned && !has_trace_arg {
        return Err(SchemaError::Mismatch(format!(
            "Subscription.{name} receives trace events, so it needs a `traceId: ID!` argument"
        )));
    }
    if name == "onTraceEvent" && !owned {
        return Err(SchemaError::Mismatch(format!(
            "Subscription.onTraceEvent must be @aws_subscribe(mutations: [\"{TRACE_EVENT_MUTATION}\"])"
        )));
    }
    let name: Arc<str> = name.into();
    Ok(SubscriptionField::new(
        f.name.node.as_str(),
        type_ref(&f.ty.node),
        move |ctx| {
            let name = name.clone();
            SubscriptionFieldFuture::new(async move {
                let s = services(&ctx)?;
                let who = principal(&ctx)?;
                let Some(slot) = ctx.data_opt::<Arc<Slot>>() else {
                    return Err(Error::new("subscriptions are served over WebSocket"));
                };
                let mut filters: Vec<(String, Value)> = ctx
                    .args
                    .iter()
                    .map(|(k, v)| (k.to_string(), plain_json(v.as_value())))
                    .collect();
                if owned {
                    let id = arg_str(&ctx, "traceId").unwrap_or("");
                    let Some(trace) = readable_trace(s, who, id).await? else {
                        return Err(errors::not_found(id));
                    };
                    // Events carry the canonical form of the ID; filter on that, whatever
                    // spelling of the UUID the client used.
                    for (k, v) in &mut filters {
                        if k == "traceId" {
                            *v = Value::String(trace.trace_id.to_string());
                        }
                    }
                }
                // The connection subscribes to the hub itself (schema::live).
                slot.fill(Target {
                    field: name,
                    filters,
                });
                Ok(futures_util::stream::empty::<
                    Result<FieldValue<'static>, Error>,
                >())
            })
        },
    ))
}
