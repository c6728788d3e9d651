//! `schema.graphql` → an executable schema, the way AppSync does it.
//!
//! The file is in AppSync's dialect: AWS scalars and `@aws_*` directives are used, never
//! declared. [`SchemaDoc::parse`] checks that, prepends the prelude, and reads what the
//! server needs from it: the root types, the commands (every `Mutation` field returning
//! `CommandAccepted!`) and the `@aws_subscribe` routes. [`build`] then turns it into an
//! async-graphql dynamic schema whose resolvers return JSON values; child fields resolve by
//! name from their parent, like AppSync's default resolvers. A start-up check refuses to run
//! when the schema and the registered handlers disagree.

pub mod auth;
mod build;
pub mod direct;
pub mod documents;
pub mod errors;
pub mod live;
mod resolvers;
pub mod scalars;
mod values;

use std::collections::{BTreeSet, HashMap};

use async_graphql::Value as GqlValue;
use async_graphql::parser::types::{
    BaseType, ConstDirective, ServiceDocument, Type, TypeDefinition, TypeKind, TypeSystemDefinition,
};
use thiserror::Error;

pub use auth::AuthRules;
pub use build::{Limits, Services, build};
pub use direct::{Answer, Direct};
pub use documents::Documents;
pub use live::LiveSchema;

/// The AppSync prelude: the scalars and directives AppSync defines itself.
pub const PRELUDE: &str = include_str!("prelude.graphql");

/// The schema shipped with tether (the repository's `schema.graphql`).
pub const DEFAULT_SDL: &str = include_str!("../../schema.graphql");

/// The return type that marks a `Mutation` field as a command.
pub const COMMAND_ACCEPTED: &str = "CommandAccepted";

/// `Mutation` fields with built-in resolvers (never commands, whatever they return).
pub const BUILTIN_MUTATIONS: [&str; 2] = ["publishTraceEvent", "replayDeadLetter"];

#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("schema.graphql does not parse: {0}")]
    Syntax(String),
    #[error("schema.graphql is not valid AppSync SDL: {0}")]
    Dialect(String),
    #[error("schema.graphql and the command handlers disagree: {0}")]
    Mismatch(String),
    #[error("the executable schema could not be built: {0}")]
    Build(String),
}

/// A parsed `schema.graphql`, prelude included.
pub struct SchemaDoc {
    types: HashMap<String, TypeDefinition>,
    /// Definition order, so the built schema lists types as the file does.
    order: Vec<String>,
    query: String,
    mutation: Option<String>,
    subscription: Option<String>,
    /// mutation → the subscription fields whose `@aws_subscribe` lists it.
    routes: HashMap<String, Vec<String>>,
}

impl SchemaDoc {
    pub fn parse(sdl: &str) -> Result<Self, SchemaError> {
        // Parsed alone first, so syntax errors point at the user's lines.
        let user = async_graphql::parser::parse_schema(sdl)
            .map_err(|e| SchemaError::Syntax(e.to_string()))?;
        for def in &user.definitions {
            match def {
                TypeSystemDefinition::Directive(d) => {
                    return Err(SchemaError::Dialect(format!(
                        "directive @{} is declared; AppSync rejects directive definitions (they come from its prelude)",
                        d.node.name.node
                    )));
                }
                TypeSystemDefinition::Type(t) if matches!(t.node.kind, TypeKind::Scalar) => {
                    return Err(SchemaError::Dialect(format!(
                        "scalar {} is declared; AppSync allows no custom scalars and defines the AWS ones itself",
                        t.node.name.node
                    )));
                }
                TypeSystemDefinition::Type(t) if t.node.name.node.starts_with("AWS") => {
                    return Err(SchemaError::Dialect(format!(
                        "type {}: the AWS prefix is reserved",
                        t.node.name.node
                    )));
                }
                _ => {}
            }
        }
        let full = async_graphql::parser::parse_schema(format!("{PRELUDE}\n{sdl}"))
            .map_err(|e| SchemaError::Syntax(e.to_string()))?;
        Self::from_document(full)
    }

    fn from_document(doc: ServiceDocument) -> Result<Self, SchemaError> {
        let mut types = HashMap::new();
        let mut order = Vec::new();
        let (mut query, mut mutation, mut subscription) = (None, None, None);
        for def in doc.definitions {
            match def {
                TypeSystemDefinition::Schema(s) => {
                    query = s.node.query.map(|n| n.node.to_string());
                    mutation = s.node.mutation.map(|n| n.node.to_string());
                    subscription = s.node.subscription.map(|n| n.node.to_string());
                }
                TypeSystemDefinition::Type(t) => {
                    let name = t.node.name.node.to_string();
                    if t.node.extend {
                        return Err(SchemaError::Dialect(format!(
                            "`extend type {name}` is not supported"
                        )));
                    }
                    if types.insert(name.clone(), t.node).is_some() {
                        return Err(SchemaError::Dialect(format!(
                            "type {name} is defined twice"
                        )));
                    }
                    order.push(name);
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        let default_root = |name: &str| types.contains_key(name).then(|| name.to_owned());
        let query = query
            .or_else(|| default_root("Query"))
            .ok_or_else(|| SchemaError::Dialect("there is no Query type".into()))?;
        let mutation = mutation.or_else(|| default_root("Mutation"));
        let subscription = subscription.or_else(|| default_root("Subscription"));

        let mut doc = Self {
            types,
            order,
            query,
            mutation,
            subscription,
            routes: HashMap::new(),
        };
        doc.routes = doc.collect_routes()?;
        Ok(doc)
    }

    /// Reads `@aws_subscribe(mutations: [...])` on the subscription fields.
    fn collect_routes(&self) -> Result<HashMap<String, Vec<String>>, SchemaError> {
        let mut routes: HashMap<String, Vec<String>> = HashMap::new();
        let Some(sub) = self.subscription.as_deref() else {
            return Ok(routes);
        };
        let mutation_fields: BTreeSet<String> =
            self.root_fields(self.mutation.as_deref()).collect();
        for field in self.object_fields(sub) {
            let Some(directive) = find_directive(&field.directives, "aws_subscribe") else {
                continue;
            };
            let mutations = directive_strings(directive, "mutations");
            for m in mutations {
                if !mutation_fields.contains(&m) {
                    return Err(SchemaError::Dialect(format!(
                        "Subscription.{} subscribes to mutation {m}, which does not exist",
                        field.name.node
                    )));
                }
                routes
                    .entry(m)
                    .or_default()
                    .push(field.name.node.to_string());
            }
        }
        Ok(routes)
    }

    /// mutation → the subscription fields it publishes to.
    pub fn routes(&self) -> &HashMap<String, Vec<String>> {
        &self.routes
    }

    /// The `Mutation` fields that are commands (return `CommandAccepted!`).
    pub fn commands(&self) -> Vec<String> {
        let Some(mutation) = self.mutation.as_deref() else {
            return Vec::new();
        };
        self.object_fields(mutation)
            .filter(|f| is_command(f))
            .map(|f| f.name.node.to_string())
            .collect()
    }

    /// Checks that every command has a handler and every handler a command.
    pub fn check_handlers<'a>(
        &self,
        handlers: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SchemaError> {
        let commands: BTreeSet<String> = self.commands().into_iter().collect();
        let handlers: BTreeSet<String> = handlers.into_iter().map(str::to_owned).collect();
        let mut problems = Vec::new();
        for c in commands.difference(&handlers) {
            problems.push(format!(
                "mutation `{c}` returns CommandAccepted! but no handler is registered for it"
            ));
        }
        for h in handlers.difference(&commands) {
            problems.push(format!(
                "handler `{h}` has no Mutation field returning CommandAccepted! in schema.graphql"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Mismatch(problems.join("; ")))
        }
    }

    fn object_fields(
        &self,
        type_name: &str,
    ) -> impl Iterator<Item = &async_graphql::parser::types::FieldDefinition> {
        self.types
            .get(type_name)
            .and_then(|t| match &t.kind {
                TypeKind::Object(o) => Some(o.fields.iter().map(|f| &f.node)),
                _ => None,
            })
            .into_iter()
            .flatten()
    }

    fn root_fields<'a>(&'a self, root: Option<&'a str>) -> impl Iterator<Item = String> + 'a {
        root.into_iter()
            .flat_map(|r| self.object_fields(r).map(|f| f.name.node.to_string()))
    }

    fn input_field_type(&self, input_type: &str, field: &str) -> Option<&Type> {
        match &self.types.get(input_type)?.kind {
            TypeKind::InputObject(o) => o
                .fields
                .iter()
                .find(|f| f.node.name.node == field)
                .map(|f| &f.node.ty.node),
            _ => None,
        }
    }
}

/// A `Mutation` field is a command when it returns `CommandAccepted!` and is not built in.
fn is_command(f: &async_graphql::parser::types::FieldDefinition) -> bool {
    let ty = &f.ty.node;
    !ty.nullable
        && matches!(&ty.base, BaseType::Named(n) if n == COMMAND_ACCEPTED)
        && !BUILTIN_MUTATIONS.contains(&f.name.node.as_str())
}

fn find_directive<'a>(
    directives: &'a [async_graphql::Positioned<ConstDirective>],
    name: &str,
) -> Option<&'a ConstDirective> {
    directives
        .iter()
        .map(|d| &d.node)
        .find(|d| d.name.node == name)
}

fn directive_strings(directive: &ConstDirective, arg: &str) -> Vec<String> {
    let value = directive.get_argument(arg).map(|v| &v.node);
    match value {
        Some(GqlValue::List(items)) => items
            .iter()
            .filter_map(|v| match v {
                GqlValue::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(GqlValue::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The name of a type reference's innermost named type.
fn base_name(ty: &Type) -> &async_graphql::Name {
    match &ty.base {
        BaseType::Named(n) => n,
        BaseType::List(inner) => base_name(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_schema_parses_and_routes_publish_trace_event() {
        let doc = SchemaDoc::parse(DEFAULT_SDL).unwrap();
        assert_eq!(
            doc.routes()["publishTraceEvent"],
            vec!["onTraceEvent".to_owned()]
        );
        let mut commands = doc.commands();
        commands.sort();
        assert_eq!(commands, ["cancelOrder", "createOrder", "shipOrder"]);
    }

    #[test]
    fn declared_directives_and_scalars_are_rejected() {
        let e = SchemaDoc::parse("directive @aws_iam on FIELD_DEFINITION\ntype Query { a: Int }")
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("AppSync rejects directive definitions"),
            "{e}"
        );
        let e = SchemaDoc::parse("scalar AWSJSON\ntype Query { a: Int }")
            .err()
            .unwrap();
        assert!(e.to_string().contains("no custom scalars"), "{e}");
    }

    #[test]
    fn handler_mismatches_are_reported_both_ways() {
        let doc = SchemaDoc::parse(DEFAULT_SDL).unwrap();
        let e = doc
            .check_handlers(["createOrder", "cancelOrder", "refundOrder"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mutation `shipOrder`") && e.contains("handler `refundOrder`"),
            "{e}"
        );
        doc.check_handlers(["createOrder", "cancelOrder", "shipOrder"])
            .unwrap();
    }

    #[test]
    fn subscribe_to_an_unknown_mutation_is_rejected() {
        let sdl = "type Query { a: Int } type Mutation { m: Int } \
                   type Subscription { s: Int @aws_subscribe(mutations: [\"nope\"]) }";
        let e = SchemaDoc::parse(sdl).err().unwrap().to_string();
        assert!(e.contains("mutation nope"), "{e}");
    }
}
