//! Subscriptions served from the hub, with async-graphql doing only the start.
//!
//! A `subscribe`/`start` runs through async-graphql once: the document is parsed and validated,
//! the arguments coerced, and the subscription resolver checks who is asking (the owner check
//! of `onTraceEvent`). Instead of streaming, the resolver hands back its hub target (field and
//! explicit arguments) in a [`Slot`]. The connection then keeps only a [`Live`]: the hub
//! subscription and a [`Plan`], the subscriber's selection set compiled against the schema
//! (aliases, fragments, `@skip`/`@include` and `__typename` resolved up front). Each published
//! payload is projected through the plan. That keeps an idle subscription at a few hundred
//! bytes instead of async-graphql's whole execution state.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_graphql::dynamic::Schema;
use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, FragmentDefinition, OperationDefinition,
    OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Request, ServerError, Value as GqlValue, Variables};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};

use super::SchemaDoc;
use super::auth::AuthRules;
use super::errors::kind;
use crate::domain::Identity;
use crate::hub::{self, Hub, TooSlow};

/// What a subscription resolver found: the hub field to subscribe to and the filters.
pub(super) struct Target {
    pub field: Arc<str>,
    pub filters: Vec<(String, Value)>,
}

/// Request data that turns a subscription resolver into a preparer: it checks, fills the slot
/// and returns an empty stream.
#[derive(Default)]
pub struct Slot(Mutex<Option<Target>>);

impl Slot {
    pub(super) fn fill(&self, target: Target) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    fn take(&self) -> Option<Target> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The subscription front: the executable schema plus what projection needs.
#[derive(Clone)]
pub struct LiveSchema {
    schema: Schema,
    doc: Arc<SchemaDoc>,
    hub: Arc<Hub>,
    rules: Arc<AuthRules>,
    /// Subscriptions being prepared at once. A burst of thousands of new subscriptions waits
    /// here cheaply instead of each holding a parsed document, async-graphql's execution state
    /// and an owner lookup at the same time (memory that stays fragmented afterwards).
    preparing: Arc<tokio::sync::Semaphore>,
}

/// See [`LiveSchema::preparing`].
const PREPARING: usize = 16;

/// What a `subscribe`/`start` turned out to be.
pub enum Prepared {
    /// A subscription registered with the hub.
    Live(Live),
    /// A query or mutation: the caller runs it (or refuses it) itself.
    Operation(Box<Request>),
}

impl LiveSchema {
    pub fn new(schema: Schema, doc: Arc<SchemaDoc>, hub: Arc<Hub>, rules: Arc<AuthRules>) -> Self {
        Self {
            schema,
            doc,
            hub,
            rules,
            preparing: Arc::new(tokio::sync::Semaphore::new(PREPARING)),
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Validates and authorises a subscription for `who` and registers it with the hub.
    /// Errors are what async-graphql, the `@aws_*` rules or the resolver said, ready for the
    /// client. A query or mutation comes back with `who` attached, for the caller to run.
    pub async fn prepare(
        &self,
        request: Request,
        who: &Identity,
    ) -> Result<Prepared, Vec<ServerError>> {
        let request = request.data(who.principal.clone()).data(who.clone());
        let _permit = self.preparing.acquire().await;
        let document = match async_graphql::parser::parse_query(&request.query) {
            Ok(d) => d,
            Err(e) => return Err(vec![ServerError::from(e)]),
        };
        let Some(operation) = subscription(&document, request.operation_name.as_deref()) else {
            return Ok(Prepared::Operation(Box::new(request)));
        };
        let selection = &operation.selection_set.node;
        let variables = with_defaults(operation, &request.variables);
        // The selection compiled first: a caller whose mode may not read a selected field is
        // refused before any resolver runs.
        let root = self.doc.subscription.as_deref().unwrap_or("Subscription");
        let ctx = Compile::new(
            &self.doc,
            &document.fragments,
            &variables,
            Some((&self.rules, who)),
        );
        let mut roots = Vec::new();
        ctx.selection(root, selection, &mut roots);
        if ctx.too_big() {
            return Err(vec![ServerError::new(
                format!(
                    "the subscription's selection expands to more than {MAX_SELECTED_FIELDS} \
                     fields, or spreads a fragment inside itself"
                ),
                Some(operation.selection_set.pos),
            )]);
        }
        if let Some((field, ty)) = ctx.refused.into_inner() {
            let error = super::errors::unauthorized(&field, &ty);
            return Err(vec![error.into_server_error(operation.selection_set.pos)]);
        }
        let slot = Arc::new(Slot::default());
        let mut stream = self.schema.execute_stream(request.data(slot.clone()));
        let mut errors = Vec::new();
        while let Some(response) = stream.next().await {
            errors.extend(response.errors);
        }
        drop(stream);
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(target) = slot.take() else {
            return Err(vec![ServerError::new(
                "the subscription selects no field (all skipped)",
                None,
            )]);
        };
        let one = match (roots.len(), roots.pop()) {
            (1, Some(node)) => Some(node),
            _ => None,
        };
        let Some(Node {
            key,
            source: Source::Field { sub, .. },
        }) = one
            .filter(|n| matches!(&n.source, Source::Field { name, .. } if **name == *target.field))
        else {
            return Err(vec![ServerError::new(
                "a subscription selects exactly one root field",
                None,
            )]);
        };
        let plan = Plan {
            key,
            nodes: sub.unwrap_or_default(),
        };
        let stream = self.hub.subscribe(&target.field, target.filters);
        Ok(Prepared::Live(Live { stream, plan }))
    }
}

/// The variables `@skip`/`@include` read: the request's, plus the operation's defaults.
fn with_defaults(operation: &OperationDefinition, given: &Variables) -> Variables {
    let mut variables = given.clone();
    for definition in &operation.variable_definitions {
        let definition = &definition.node;
        if let Some(default) = &definition.default_value
            && !variables.contains_key(&definition.name.node)
        {
            variables.insert(definition.name.node.clone(), default.node.clone());
        }
    }
    variables
}

/// The request's operation, if it is a subscription.
fn subscription<'d>(
    document: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    let operation = match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    (operation.node.ty == OperationType::Subscription).then_some(&operation.node)
}

/// One open subscription: the hub's stream and how to shape what it brings.
pub struct Live {
    stream: hub::Subscription,
    plan: Plan,
}

/// What a subscription delivers next.
pub enum Delivery {
    /// A GraphQL response: `{"data": {<key>: …}}`, with `errors` when a non-null field was
    /// not selected by the publisher.
    Item(Value),
    /// The subscriber fell behind and the hub dropped it: the last delivery.
    Overflow(Value),
}

impl Stream for Live {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let item = match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let plan = &self.plan;
        Poll::Ready(Some(match item {
            Ok(payload) => Delivery::Item(plan.response(&payload)),
            Err(TooSlow) => Delivery::Overflow(json!({
                "data": { plan.key.as_ref(): null },
                "errors": [{
                    "message": "the subscriber fell too far behind and was dropped; query traceEvents to catch up",
                    "path": [plan.key.as_ref()],
                    "extensions": { "errorType": kind::SUBSCRIPTION_OVERFLOW },
                }],
            })),
        }))
    }
}

/// A compiled selection set.
pub struct Plan {
    /// The response key of the subscription field (its alias or name).
    key: Box<str>,
    nodes: Box<[Node]>,
}

struct Node {
    key: Box<str>,
    source: Source,
}

enum Source {
    Typename(Arc<str>),
    Field {
        name: Box<str>,
        /// For the error message when a non-null field is missing: `Type!` and its parent.
        non_null: Option<Arc<(String, String)>>,
        sub: Option<Box<[Node]>>,
    },
}

impl Plan {
    /// The GraphQL response for one published payload.
    fn response(&self, payload: &Value) -> Value {
        match project(&self.nodes, payload) {
            Ok(value) => json!({ "data": { self.key.as_ref(): value } }),
            Err(message) => json!({
                "data": { self.key.as_ref(): null },
                "errors": [{ "message": message, "path": [self.key.as_ref()] }],
            }),
        }
    }
}

/// Shapes `value` as `nodes` select it. A missing non-null field is an error, as on AppSync
/// when the publishing mutation did not select it.
fn project(nodes: &[Node], value: &Value) -> Result<Value, String> {
    if nodes.is_empty() {
        return Ok(value.clone());
    }
    match value {
        Value::Array(items) => items.iter().map(|v| project(nodes, v)).collect(),
        Value::Object(map) => {
            let mut out = Map::with_capacity(nodes.len());
            for node in nodes {
                let v = match &node.source {
                    Source::Typename(t) => Value::String(t.to_string()),
                    Source::Field {
                        name,
                        non_null,
                        sub,
                    } => match map.get(name.as_ref()) {
                        None | Some(Value::Null) => match non_null {
                            Some(what) => {
                                return Err(format!(
                                    "Cannot return null for non-nullable type: '{}' within parent \
                                     '{}' (the publishing mutation did not select it)",
                                    what.0, what.1
                                ));
                            }
                            None => Value::Null,
                        },
                        Some(v) => match sub {
                            Some(sub) => project(sub, v)?,
                            None => v.clone(),
                        },
                    },
                };
                out.insert(node.key.to_string(), v);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

struct Compile<'a> {
    doc: &'a SchemaDoc,
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    variables: &'a Variables,
    /// The rules and the caller to check each selected field against.
    auth: Option<(&'a AuthRules, &'a Identity)>,
    /// The first field the caller may not read, and its type.
    refused: std::cell::RefCell<Option<(String, String)>>,
    /// Fragments being expanded (a cycle is refused, not followed) and how many fields have
    /// been visited: this runs before async-graphql's validation, on hostile documents too.
    expanding: std::cell::RefCell<Vec<Name>>,
    visited: std::cell::Cell<usize>,
}

/// Most selections (fields and fragment spreads) a subscription may expand to.
const MAX_SELECTED_FIELDS: usize = 2_000;

impl<'a> Compile<'a> {
    fn new(
        doc: &'a SchemaDoc,
        fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
        variables: &'a Variables,
        auth: Option<(&'a AuthRules, &'a Identity)>,
    ) -> Self {
        Self {
            doc,
            fragments,
            variables,
            auth,
            refused: Default::default(),
            expanding: Default::default(),
            visited: Default::default(),
        }
    }

    /// The selection expanded to more than [`MAX_SELECTED_FIELDS`] or spread a fragment
    /// inside itself.
    fn too_big(&self) -> bool {
        self.visited.get() > MAX_SELECTED_FIELDS
    }
}

impl Compile<'_> {
    /// Appends the fields `set` selects on an object of type `ty` to `out`, merging fields
    /// selected twice under one key.
    fn selection(&self, ty: &str, set: &SelectionSet, out: &mut Vec<Node>) {
        for item in &set.items {
            if self.too_big() {
                return;
            }
            if self.skipped(item.node.directives()) {
                continue;
            }
            // Fields and spreads alike: a chain of fragments that each spread the next twice
            // would otherwise cost 2^n.
            self.visited.set(self.visited.get() + 1);
            match &item.node {
                Selection::Field(f) => {
                    let f = &f.node;
                    let key: Box<str> = f.response_key().node.as_str().into();
                    let name = f.name.node.as_str();
                    let node = if name == "__typename" {
                        Node {
                            key,
                            source: Source::Typename(ty.into()),
                        }
                    } else {
                        let def = self.doc.object_fields(ty).find(|d| d.name.node == name);
                        // Unknown fields are left to validation, which names them.
                        if let Some((rules, who)) = self.auth
                            && def.is_some()
                            && !rules.allows(ty, name, who)
                        {
                            let mut refused = self.refused.borrow_mut();
                            refused.get_or_insert_with(|| (name.to_owned(), ty.to_owned()));
                        }
                        let child = def.map(|d| super::base_name(&d.ty.node).to_string());
                        let non_null = def
                            .filter(|d| !d.ty.node.nullable)
                            .map(|_| Arc::new((name.to_owned(), ty.to_owned())));
                        let sub = (!f.selection_set.node.items.is_empty()).then(|| {
                            let mut nodes = Vec::new();
                            let child = child.as_deref().unwrap_or_default();
                            self.selection(child, &f.selection_set.node, &mut nodes);
                            nodes.into_boxed_slice()
                        });
                        Node {
                            key,
                            source: Source::Field {
                                name: name.into(),
                                non_null,
                                sub,
                            },
                        }
                    };
                    merge(out, node);
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if self.expanding.borrow().contains(name) {
                        // A cycle: validation refuses the document; stop expanding it.
                        self.visited.set(MAX_SELECTED_FIELDS + 1);
                        return;
                    }
                    if let Some(fragment) = self.fragments.get(name) {
                        self.expanding.borrow_mut().push(name.clone());
                        self.selection(ty, &fragment.node.selection_set.node, out);
                        self.expanding.borrow_mut().pop();
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.selection(ty, &inline.node.selection_set.node, out);
                }
            }
        }
    }

    /// `@skip(if: true)` or `@include(if: false)`.
    fn skipped(&self, directives: &[Positioned<Directive>]) -> bool {
        directives.iter().any(|d| {
            let d = &d.node;
            let condition = || {
                d.get_argument("if").map(|v| {
                    let value = v
                        .node
                        .clone()
                        .into_const_with(|name| self.variables.get(&name).cloned().ok_or(()));
                    matches!(value, Ok(GqlValue::Boolean(true)))
                })
            };
            match d.name.node.as_str() {
                "skip" => condition() == Some(true),
                "include" => condition() == Some(false),
                _ => false,
            }
        })
    }
}

/// Adds `node`, or merges its sub-selection into the field already selected under its key.
fn merge(out: &mut Vec<Node>, node: Node) {
    let Some(existing) = out.iter_mut().find(|n| n.key == node.key) else {
        out.push(node);
        return;
    };
    if let (Source::Field { sub: Some(a), .. }, Source::Field { sub: Some(b), .. }) =
        (&mut existing.source, node.source)
    {
        let mut merged = std::mem::take(a).into_vec();
        for n in b.into_vec() {
            merge(&mut merged, n);
        }
        *a = merged.into_boxed_slice();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(query: &str, variables: Value) -> Plan {
        let doc = SchemaDoc::parse(super::super::DEFAULT_SDL).unwrap();
        let document = async_graphql::parser::parse_query(query).unwrap();
        let operation = subscription(&document, None).unwrap();
        let selection = &operation.selection_set.node;
        let variables = with_defaults(operation, &Variables::from_json(variables));
        let ctx = Compile::new(&doc, &document.fragments, &variables, None);
        let mut roots = Vec::new();
        ctx.selection("Subscription", selection, &mut roots);
        let root = roots.into_iter().next().unwrap();
        let Source::Field { sub, .. } = root.source else {
            panic!("not a field")
        };
        Plan {
            key: root.key,
            nodes: sub.unwrap(),
        }
    }

    const EVENT: &str = r#"{"traceId":"t","seq":3,"component":"C","status":"SUCCESS","timestamp":"x","message":null}"#;

    #[test]
    fn aliases_fragments_directives_and_typename_shape_the_payload() {
        let p = plan(
            "subscription($t: ID!, $more: Boolean!) { ev: onTraceEvent(traceId: $t) {
                n: seq ...F __typename
                ... on TraceEvent { status component @include(if: $more) message @skip(if: true) }
             } }
             fragment F on TraceEvent { traceId seq }",
            json!({ "t": "t", "more": false }),
        );
        let got = p.response(&serde_json::from_str(EVENT).unwrap());
        assert_eq!(
            got,
            json!({ "data": { "ev": { "n": 3, "traceId": "t", "seq": 3, "__typename": "TraceEvent", "status": "SUCCESS" } } })
        );
    }

    #[test]
    fn directives_read_variable_defaults() {
        let p = plan(
            "subscription($t: ID!, $m: Boolean = true, $s: Boolean = true) {
                onTraceEvent(traceId: $t) { seq message @include(if: $m) status @skip(if: $s) } }",
            json!({ "t": "t" }),
        );
        let got = p.response(&serde_json::from_str(EVENT).unwrap());
        assert_eq!(
            got["data"]["onTraceEvent"],
            json!({ "seq": 3, "message": null })
        );
    }

    #[test]
    fn a_non_null_field_the_publisher_left_out_is_an_error_and_a_nullable_one_is_null() {
        let p = plan(
            "subscription { onTraceEvent(traceId: \"t\") { seq message attempt } }",
            json!({}),
        );
        let got = p.response(&json!({ "traceId": "t", "seq": 1 }));
        assert_eq!(
            got["data"]["onTraceEvent"],
            json!({ "seq": 1, "message": null, "attempt": null })
        );
        let p = plan(
            "subscription { onTraceEvent(traceId: \"t\") { seq component } }",
            json!({}),
        );
        let got = p.response(&json!({ "traceId": "t", "seq": 1 }));
        assert_eq!(got["data"]["onTraceEvent"], Value::Null);
        let message = got["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("non-nullable type: 'component' within parent 'TraceEvent'"),
            "{message}"
        );
    }

    #[test]
    fn fragment_cycles_and_exponential_spreads_stop_the_compile() {
        let doc = SchemaDoc::parse(super::super::DEFAULT_SDL).unwrap();
        let cyclic = "subscription { onTraceEvent(traceId: \"t\") { ...A } } \
                      fragment A on TraceEvent { seq ...B } fragment B on TraceEvent { ...A }";
        let mut wide = String::from("subscription { onTraceEvent(traceId: \"t\") { ...F0 } }");
        for i in 0..30 {
            wide.push_str(&format!(
                " fragment F{i} on TraceEvent {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        wide.push_str(" fragment F30 on TraceEvent { seq }");
        for query in [cyclic, wide.as_str()] {
            let document = async_graphql::parser::parse_query(query).unwrap();
            let operation = subscription(&document, None).unwrap();
            let variables = Variables::default();
            let ctx = Compile::new(&doc, &document.fragments, &variables, None);
            let mut roots = Vec::new();
            ctx.selection("Subscription", &operation.selection_set.node, &mut roots);
            assert!(ctx.too_big(), "{query}");
        }
    }

    #[test]
    fn queries_and_mutations_are_not_subscriptions() {
        let doc = async_graphql::parser::parse_query("query { trace(traceId: \"x\") { state } }")
            .unwrap();
        assert!(subscription(&doc, None).is_none());
        let doc = async_graphql::parser::parse_query(
            "query A { a: __typename } subscription B { onTraceEvent(traceId: \"x\") { seq } }",
        )
        .unwrap();
        assert!(subscription(&doc, Some("B")).is_some());
        assert!(subscription(&doc, Some("A")).is_none());
        assert!(subscription(&doc, None).is_none());
    }
}
