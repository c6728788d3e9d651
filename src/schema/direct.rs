//! Command mutations answered without the general executor.
//!
//! Almost every request a busy API sees is the same few command mutations
//! (`mutation($i: CreateOrderInput!) { createOrder(input: $i) { traceId } }`) with new
//! variables. async-graphql's validation and execution of such a request were about a quarter
//! of the API's own CPU per accept (45–50 µs against 34–37 µs without them, side by side in
//! `scripts/bench --pg`), and nearly all of that work depends on the text alone, which has
//! already been validated by the first request that sent it. So, for a kept text (see
//! [`super::documents`]) that ran once through the general executor without an error, and
//! whose shape is simple enough to be sure of, a [`Plan`] records what that request did:
//! which command, which arguments come from which variables, which fields the caller
//! selected under which keys. A later request with the same text and operation name then
//!
//! 1. checks its variables against their declared types, as GraphQL input coercion would,
//! 2. checks the `@aws_*` rules for the fields it touches, for its own caller,
//! 3. builds the payload exactly as the command resolver does, submits it through the same
//!    [`CommandApi`], and writes the selected fields.
//!
//! Whenever step 1 or 2 finds anything short of certain success (a variable missing, of the
//! wrong type, a field the caller may not see, an extra variable), the request goes the
//! general way instead, which produces the error; so this path never answers differently,
//! it only answers sooner. Failures of the submit itself (the handler's own validation, the
//! store) are answered here, through the same error mapping as the resolver's.
//!
//! What makes a shape simple: one mutation operation, no fragments and no directives
//! anywhere, no variable or argument defaults (in the operation, the field or any input type
//! it reaches), one root field that is a command not routed to a subscription, arguments
//! that are whole variables or constants, and a selection of `CommandAccepted`'s own fields
//! and `__typename`, each response key once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::parser::types::{
    BaseType, ExecutableDocument, OperationType, Selection, Type, TypeKind,
};
use async_graphql::{Name, Pos, Response};
use serde_json::{Map, Value};

use super::resolvers::{accept_error, accepted_json};
use super::scalars::{self, Wire};
use super::values::input_to_json;
use super::{AuthRules, COMMAND_ACCEPTED, SchemaDoc, is_command};
use crate::domain::Identity;
use crate::pipeline::command_api::CommandApi;

/// What the direct path needs of the server: the schema it checks against, the rules it
/// enforces and the accept path it submits to (the same ones the resolvers use).
pub struct Direct {
    doc: Arc<SchemaDoc>,
    rules: Arc<AuthRules>,
    commands: CommandApi,
    /// Requests answered here, shown by `/health` (`directAnswers`).
    answered: AtomicU64,
}

/// A validated command mutation text, reduced to what varies between its requests.
#[derive(Debug)]
pub struct Plan {
    /// The operation name the validating request gave (requests must give the same).
    operation_name: Option<String>,
    /// The mutation field (= the command type) and its position, for error locations.
    command: String,
    pos: Pos,
    /// The key the field's answer goes under (its alias, or its name).
    key: String,
    /// The operation's variables and their declared types.
    variables: Vec<(String, Type)>,
    payload: Payload,
    idempotency_key: Option<Source>,
    /// (response key, `CommandAccepted` field) in selection order.
    selection: Vec<(String, String)>,
    /// (type, field) pairs the `@aws_*` rules are checked on.
    touched: Vec<(String, String)>,
}

/// How the command resolver builds the payload.
#[derive(Debug)]
enum Payload {
    /// The field has an `input` argument: it is the payload (null when absent).
    Input(Option<Source>, Type),
    /// Otherwise every given argument but `idempotencyKey`, by name.
    Arguments(Vec<(String, Source, Type)>),
}

/// Where an argument's value comes from.
#[derive(Debug)]
enum Source {
    Variable(String),
    /// A constant in the text, already converted to JSON (for payload arguments) or as given.
    Constant(Value),
}

/// What a request through a plan came to.
pub enum Answer {
    /// Accepted: the response body, written straight out.
    Data(String),
    /// The submit failed: the response, as the executor would have made it.
    Failed(Response),
    /// Not certain to succeed here: run the request the general way.
    General,
}

impl Plan {
    /// The plan for `doc` run as `operation_name`, if its shape is simple (see the module
    /// doc). Call only for a document that the general executor ran without errors.
    pub fn of(
        schema: &SchemaDoc,
        doc: &ExecutableDocument,
        operation_name: Option<&str>,
    ) -> Option<Self> {
        if !doc.fragments.is_empty() {
            return None;
        }
        let mut operations = doc.operations.iter();
        let (_, op) = operations.next()?;
        if operations.next().is_some() {
            return None;
        }
        let op = &op.node;
        if op.ty != OperationType::Mutation || !op.directives.is_empty() {
            return None;
        }
        let mutation = schema.mutation.as_deref()?;
        let [item] = op.selection_set.node.items.as_slice() else {
            return None;
        };
        let Selection::Field(field) = &item.node else {
            return None;
        };
        let pos = field.pos;
        let field = &field.node;
        let name = field.name.node.as_str();
        let def = schema
            .object_fields(mutation)
            .find(|f| f.name.node == name)?;
        if !is_command(def)
            || !field.directives.is_empty()
            || schema.routes().contains_key(name)
            || def.arguments.iter().any(|a| a.node.default_value.is_some())
        {
            return None;
        }
        let mut variables = Vec::new();
        for v in &op.variable_definitions {
            let v = &v.node;
            if v.default_value.is_some()
                || !v.directives.is_empty()
                || has_defaults(schema, &v.var_type.node, &mut HashSet::new())
            {
                return None;
            }
            variables.push((v.name.node.to_string(), v.var_type.node.clone()));
        }
        // Each given argument: a whole variable or a constant without variables.
        let mut given = Vec::new();
        for (arg, value) in &field.arguments {
            let ty = &def
                .arguments
                .iter()
                .find(|a| a.node.name.node == arg.node)?
                .node
                .ty
                .node;
            if has_defaults(schema, ty, &mut HashSet::new()) {
                return None;
            }
            let source = match &value.node {
                async_graphql_value::Value::Variable(v) => Source::Variable(v.to_string()),
                other => {
                    let constant = other.clone().into_const()?;
                    Source::Constant(match arg.node.as_str() {
                        "idempotencyKey" => constant.into_json().ok()?,
                        _ => input_to_json(schema, ty, &constant),
                    })
                }
            };
            given.push((arg.node.to_string(), source, ty.clone()));
        }
        let idempotency_key = given
            .iter()
            .position(|(n, ..)| n == "idempotencyKey")
            .map(|i| given.remove(i).1);
        let payload = match def.arguments.iter().find(|a| a.node.name.node == "input") {
            Some(input) => {
                let source = given
                    .iter()
                    .position(|(n, ..)| n == "input")
                    .map(|i| given.remove(i).1);
                Payload::Input(source, input.node.ty.node.clone())
            }
            None => Payload::Arguments(given),
        };
        let mut touched = vec![(mutation.to_owned(), name.to_owned())];
        let mut selection = Vec::new();
        let mut keys = HashSet::new();
        for item in &field.selection_set.node.items {
            let Selection::Field(sub) = &item.node else {
                return None;
            };
            let sub = &sub.node;
            let sub_name = sub.name.node.as_str();
            if !sub.arguments.is_empty()
                || !sub.directives.is_empty()
                || !sub.selection_set.node.items.is_empty()
                || !(sub_name == "__typename" || answers_as_declared(schema, sub_name))
            {
                return None;
            }
            let key = sub.response_key().node.to_string();
            if !keys.insert(key.clone()) {
                return None;
            }
            touched.push((COMMAND_ACCEPTED.to_owned(), sub_name.to_owned()));
            selection.push((key, sub_name.to_owned()));
        }
        if selection.is_empty() {
            return None;
        }
        Some(Self {
            operation_name: operation_name.map(str::to_owned),
            command: name.to_owned(),
            pos,
            key: field.response_key().node.to_string(),
            variables,
            payload,
            idempotency_key,
            selection,
            touched,
        })
    }
}

impl Direct {
    pub fn new(doc: Arc<SchemaDoc>, rules: Arc<AuthRules>, commands: CommandApi) -> Self {
        Self {
            doc,
            rules,
            commands,
            answered: AtomicU64::new(0),
        }
    }

    pub fn schema(&self) -> &SchemaDoc {
        &self.doc
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Runs `plan` for one request, or says it must go the general way.
    pub async fn run(
        &self,
        plan: &Plan,
        who: &Identity,
        operation_name: Option<&str>,
        variables: &Map<String, Value>,
    ) -> Answer {
        if plan.operation_name.as_deref() != operation_name
            || !plan
                .touched
                .iter()
                .all(|(ty, field)| self.rules.allows(ty, field, who))
            || variables
                .keys()
                .any(|k| !plan.variables.iter().any(|(n, _)| n == k))
        {
            return Answer::General;
        }
        // Each variable sent, checked, then as the GraphQL value async-graphql makes of it.
        let mut values = HashMap::with_capacity(variables.len());
        for (name, ty) in &plan.variables {
            match variables.get(name) {
                Some(v) if valid(&self.doc, ty, v) => match async_graphql::to_value(v) {
                    Ok(value) => {
                        values.insert(name.as_str(), value);
                    }
                    Err(_) => return Answer::General,
                },
                None if ty.nullable => {}
                _ => return Answer::General,
            }
        }
        // The payload, as the command resolver builds it from the coerced arguments.
        let resolve = |source: &Source, ty: &Type| match source {
            Source::Constant(v) => Some(v.clone()),
            Source::Variable(v) => values
                .get(v.as_str())
                .map(|value| input_to_json(&self.doc, ty, value)),
        };
        let payload = match &plan.payload {
            Payload::Input(source, ty) => source
                .as_ref()
                .and_then(|s| resolve(s, ty))
                .unwrap_or(Value::Null),
            Payload::Arguments(arguments) => {
                let mut out = Map::new();
                for (name, source, ty) in arguments {
                    match resolve(source, ty) {
                        Some(v) => {
                            out.insert(name.clone(), v);
                        }
                        // An argument whose variable was not sent: whether the resolver sees
                        // it as absent or null is async-graphql's business.
                        None => return Answer::General,
                    }
                }
                Value::Object(out)
            }
        };
        let key = match &plan.idempotency_key {
            Some(Source::Constant(v)) => v.as_str().map(str::to_owned),
            Some(Source::Variable(v)) => {
                variables.get(v).and_then(Value::as_str).map(str::to_owned)
            }
            None => None,
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        match self
            .commands
            .submit(&who.principal, &plan.command, payload, key)
            .await
        {
            Ok(accepted) => {
                // In selection order, as the executor writes it (a JSON map would sort).
                let accepted = accepted_json(&accepted);
                let mut body = format!("{{\"data\":{{{}:{{", Value::from(plan.key.as_str()));
                for (i, (key, field)) in plan.selection.iter().enumerate() {
                    let value = match field.as_str() {
                        "__typename" => Value::from(COMMAND_ACCEPTED),
                        f => accepted.get(f).cloned().unwrap_or(Value::Null),
                    };
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!("{}:{value}", Value::from(key.as_str())));
                }
                body.push_str("}}}");
                Answer::Data(body)
            }
            // As the executor answers a failed root mutation field: no data, one error
            // located at the field (async-graphql gives such errors no path).
            Err(e) => Answer::Failed(Response::from_errors(vec![
                accept_error(e).into_server_error(plan.pos),
            ])),
        }
    }
}

/// Is `field` of `CommandAccepted` one the accept answer holds, declared with a type its
/// value always passes (the executor checks output scalars; this path writes them as they
/// are)?
fn answers_as_declared(schema: &SchemaDoc, field: &str) -> bool {
    let Some(def) = schema
        .object_fields(COMMAND_ACCEPTED)
        .find(|f| f.name.node == field)
    else {
        return false;
    };
    let BaseType::Named(ty) = &def.ty.node.base else {
        return false;
    };
    let enum_with_accepted = || {
        matches!(schema.types.get(ty.as_str()).map(|t| &t.kind),
            Some(TypeKind::Enum(e)) if e.values.iter().any(|v| v.node.value.node == "ACCEPTED"))
    };
    match field {
        "traceId" => matches!(ty.as_str(), "ID" | "String"),
        "status" => ty == "String" || enum_with_accepted(),
        "acceptedAt" => matches!(ty.as_str(), "AWSDateTime" | "String"),
        _ => false,
    }
}

/// Does `v` certainly pass GraphQL input coercion as `ty`? Stricter than async-graphql where
/// that is simpler (an `Int` must fit 32 bits, an `ID` must be a string): a value this
/// refuses goes the general way, which decides.
fn valid(doc: &SchemaDoc, ty: &Type, v: &Value) -> bool {
    if v.is_null() {
        return ty.nullable;
    }
    match &ty.base {
        BaseType::List(inner) => match v {
            Value::Array(items) => items.iter().all(|i| valid(doc, inner, i)),
            single => valid(doc, inner, single),
        },
        BaseType::Named(name) => match name.as_str() {
            "Int" => v.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            "Float" => v.is_number(),
            "String" | "ID" => v.is_string(),
            "Boolean" => v.is_boolean(),
            aws if scalars::AWS_SCALARS.contains(&aws) => scalars::is_valid(
                aws,
                match v {
                    Value::String(s) => Wire::Str(s),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => Wire::Int(i),
                        None => return false,
                    },
                    _ => Wire::Other,
                },
            ),
            other => match doc.types.get(other).map(|t| &t.kind) {
                Some(TypeKind::Enum(e)) => v
                    .as_str()
                    .is_some_and(|s| e.values.iter().any(|x| x.node.value.node == s)),
                Some(TypeKind::InputObject(o)) => {
                    let Value::Object(fields) = v else {
                        return false;
                    };
                    fields
                        .keys()
                        .all(|k| o.fields.iter().any(|f| f.node.name.node.as_str() == k))
                        && o.fields
                            .iter()
                            .all(|f| match fields.get(f.node.name.node.as_str()) {
                                Some(x) => valid(doc, &f.node.ty.node, x),
                                None => f.node.ty.node.nullable,
                            })
                }
                _ => false,
            },
        },
    }
}

/// Does `ty`, or any input type it reaches, declare a default value? Defaults are filled in
/// by the executor; the direct path leaves such shapes to it.
fn has_defaults(doc: &SchemaDoc, ty: &Type, seen: &mut HashSet<Name>) -> bool {
    let name = match &ty.base {
        BaseType::List(inner) => return has_defaults(doc, inner, seen),
        BaseType::Named(name) => name,
    };
    if !seen.insert(name.clone()) {
        return false;
    }
    match doc.types.get(name.as_str()).map(|t| &t.kind) {
        Some(TypeKind::InputObject(o)) => o
            .fields
            .iter()
            .any(|f| f.node.default_value.is_some() || has_defaults(doc, &f.node.ty.node, seen)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Option<Plan> {
        let schema = SchemaDoc::parse(
            r#"
            type Query { a: Int }
            type Mutation {
              createOrder(input: OrderInput!, idempotencyKey: String): CommandAccepted!
              byArgs(customerId: ID!, note: String): CommandAccepted!
              defaulted(input: WithDefault!): CommandAccepted!
              argDefault(input: OrderInput!, idempotencyKey: String = "k"): CommandAccepted!
              routed(input: OrderInput!): CommandAccepted!
              other(input: OrderInput!): Int
            }
            type Subscription { onRouted: CommandAccepted @aws_subscribe(mutations: ["routed"]) }
            type CommandAccepted { traceId: ID! status: String! acceptedAt: AWSPhone! extra: Int }
            input OrderInput { customerId: ID! items: [Item!]! }
            input Item { sku: String! }
            input WithDefault { item: DeepDefault }
            input DeepDefault { n: Int = 3 }
            "#,
        )
        .unwrap();
        let doc = async_graphql::parser::parse_query(text).unwrap();
        Plan::of(&schema, &doc, None)
    }

    #[test]
    fn simple_command_texts_get_a_plan() {
        let p = plan("mutation($i: OrderInput!, $k: String) { createOrder(input: $i, idempotencyKey: $k) { traceId s: status __typename } }").unwrap();
        assert_eq!(p.command, "createOrder");
        assert_eq!(p.key, "createOrder");
        assert_eq!(
            p.selection,
            [
                ("traceId", "traceId"),
                ("s", "status"),
                ("__typename", "__typename")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert!(matches!(p.payload, Payload::Input(Some(Source::Variable(ref v)), _) if v == "i"));
        assert!(matches!(p.idempotency_key, Some(Source::Variable(ref v)) if v == "k"));
        // Constants are converted once; commands without `input` take their arguments.
        let p = plan("mutation { x: createOrder(input: {customerId: \"c\", items: {sku: \"a\"}}, idempotencyKey: \"k\") { traceId } }").unwrap();
        assert_eq!(p.key, "x");
        assert!(
            matches!(&p.payload, Payload::Input(Some(Source::Constant(v)), _)
            if *v == serde_json::json!({ "customerId": "c", "items": [{ "sku": "a" }] }))
        );
        let p =
            plan("mutation($c: ID!) { byArgs(customerId: $c, note: \"n\") { traceId } }").unwrap();
        assert!(matches!(&p.payload, Payload::Arguments(a) if a.len() == 2));
    }

    #[test]
    fn anything_else_goes_the_general_way() {
        for text in [
            // Not a single command field.
            "query { a }",
            "mutation($i: OrderInput!) { other(input: $i) }",
            "mutation($i: OrderInput!) { a: createOrder(input: $i) { traceId } b: createOrder(input: $i) { traceId } }",
            "mutation($i: OrderInput!) { routed(input: $i) { traceId } }",
            // Fragments and directives.
            "mutation($i: OrderInput!) { ...F } fragment F on Mutation { createOrder(input: $i) { traceId } }",
            "mutation($i: OrderInput!) { createOrder(input: $i) { ... on CommandAccepted { traceId } } }",
            "mutation($i: OrderInput!, $s: Boolean!) { createOrder(input: $i) { traceId @skip(if: $s) } }",
            "mutation($i: OrderInput!) @x { createOrder(input: $i) { traceId } }",
            // Defaults anywhere.
            "mutation($i: OrderInput! = {customerId: \"c\", items: []}) { createOrder(input: $i) { traceId } }",
            "mutation($i: WithDefault!) { defaulted(input: $i) { traceId } }",
            "mutation($i: OrderInput!) { argDefault(input: $i) { traceId } }",
            // Variables inside constants; fields the accept answer does not hold.
            "mutation($c: ID!) { createOrder(input: {customerId: $c, items: []}) { traceId } }",
            "mutation($i: OrderInput!) { createOrder(input: $i) { extra } }",
            "mutation($i: OrderInput!) { createOrder(input: $i) { acceptedAt } }",
            "mutation($i: OrderInput!) { createOrder(input: $i) { t: traceId t: status } }",
            "mutation A($i: OrderInput!) { createOrder(input: $i) { traceId } } mutation B($i: OrderInput!) { createOrder(input: $i) { traceId } }",
        ] {
            assert!(plan(text).is_none(), "{text}");
        }
    }
}
