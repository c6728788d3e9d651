//! Builds the async-graphql dynamic schema from a [`SchemaDoc`].

use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, EnumItem, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, Scalar,
    Schema, Subscription, SubscriptionField, TypeRef,
};
use async_graphql::parser::types::{BaseType, FieldDefinition, Type, TypeKind};
use async_graphql::{Name, Value as GqlValue};

use super::resolvers::{self, Root};
use super::scalars::{self, Wire};
use super::{SchemaDoc, SchemaError, is_command};
use crate::hub::Hub;
use crate::pipeline::command_api::CommandApi;
use crate::ports::Store;

/// Request limits enforced by the schema itself.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
    /// Largest `limit` a list query may ask for.
    pub max_page: i64,
}

/// What the resolvers work with. Injected as schema data; nothing global.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub commands: CommandApi,
    pub doc: Arc<SchemaDoc>,
    pub limits: Limits,
    /// The `@aws_*` directives, checked on every resolved field.
    pub rules: Arc<super::AuthRules>,
}

pub fn build(services: Services) -> Result<Schema, SchemaError> {
    let doc = services.doc.clone();
    let limits = services.limits.clone();
    let mut builder = Schema::build(
        &doc.query,
        doc.mutation.as_deref(),
        doc.subscription.as_deref(),
    );
    for name in scalars::AWS_SCALARS {
        builder = builder.register(aws_scalar(name));
    }
    for name in &doc.order {
        let def = &doc.types[name];
        let root = if *name == doc.query {
            Some(Root::Query)
        } else if Some(name) == doc.mutation.as_ref() {
            Some(Root::Mutation)
        } else if Some(name) == doc.subscription.as_ref() {
            Some(Root::Subscription)
        } else {
            None
        };
        match (&def.kind, root) {
            (TypeKind::Scalar, _) => {} // the AWS scalars, registered above
            (TypeKind::Object(o), Some(Root::Subscription)) => {
                let mut sub = Subscription::new(name);
                for f in &o.fields {
                    let f = &f.node;
                    sub = sub.field(with_arguments_sub(resolvers::subscription(&doc, f)?, f));
                }
                builder = builder.register(sub);
            }
            (TypeKind::Object(o), root) => {
                let mut object = Object::new(name);
                for f in &o.fields {
                    let f = &f.node;
                    let field = match root {
                        Some(Root::Query) => resolvers::query(f)?,
                        Some(Root::Mutation) if is_command(f) => resolvers::command(f),
                        Some(Root::Mutation) => resolvers::mutation(f)?,
                        _ => by_name(f, name),
                    };
                    object = object.field(with_arguments(field, f));
                }
                builder = builder.register(object);
            }
            (TypeKind::InputObject(io), _) => {
                let mut input = InputObject::new(name);
                for f in &io.fields {
                    input = input.field(input_value(&f.node));
                }
                builder = builder.register(input);
            }
            (TypeKind::Enum(e), _) => {
                let mut en = Enum::new(name);
                for v in &e.values {
                    en = en.item(EnumItem::new(v.node.value.node.as_str()));
                }
                builder = builder.register(en);
            }
            (TypeKind::Interface(_) | TypeKind::Union(_), _) => {
                return Err(SchemaError::Build(format!(
                    "{name}: interfaces and unions are not supported yet"
                )));
            }
        }
    }
    // `schema::direct` answers kept command mutations without this executor: it applies the
    // auth rules itself, and would have to apply any extension added here too.
    builder
        .extension(super::auth::Enforce(services.rules.clone()))
        .data(services)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(64)
        .limit_directives(16)
        .finish()
        .map_err(|e| SchemaError::Build(e.0))
}

/// An AWS scalar that validates input like AppSync (and output, which tether produces as
/// strings already).
fn aws_scalar(name: &'static str) -> Scalar {
    Scalar::new(name).validator(move |value| match value {
        GqlValue::String(s) => scalars::is_valid(name, Wire::Str(s)),
        GqlValue::Number(n) => n
            .as_i64()
            .is_some_and(|i| scalars::is_valid(name, Wire::Int(i))),
        _ => scalars::is_valid(name, Wire::Other),
    })
}

/// A field of an ordinary object: resolved by name from the parent's JSON value.
fn by_name(f: &FieldDefinition, parent: &str) -> Field {
    let name = f.name.node.to_string();
    let non_null = !f.ty.node.nullable;
    let message = format!(
        "Cannot return null for non-nullable type: '{}' within parent '{parent}'",
        f.ty.node
    );
    Field::new(f.name.node.as_str(), type_ref(&f.ty.node), move |ctx| {
        let value = match ctx.parent_value.as_value() {
            Some(GqlValue::Object(map)) => map
                .get(name.as_str())
                .filter(|v| **v != GqlValue::Null)
                .cloned(),
            _ => None,
        };
        match value {
            Some(v) => FieldFuture::Value(Some(FieldValue::value(v))),
            None if non_null => {
                let message = message.clone();
                FieldFuture::new(async move {
                    Err::<Option<FieldValue>, _>(async_graphql::Error::new(message))
                })
            }
            None => FieldFuture::Value(None),
        }
    })
}

fn with_arguments(mut field: Field, f: &FieldDefinition) -> Field {
    for arg in &f.arguments {
        field = field.argument(input_value(&arg.node));
    }
    field
}

fn with_arguments_sub(mut field: SubscriptionField, f: &FieldDefinition) -> SubscriptionField {
    for arg in &f.arguments {
        field = field.argument(input_value(&arg.node));
    }
    field
}

fn input_value(def: &async_graphql::parser::types::InputValueDefinition) -> InputValue {
    let mut iv = InputValue::new(def.name.node.as_str(), type_ref(&def.ty.node));
    if let Some(default) = &def.default_value {
        iv = iv.default_value(default.node.clone());
    }
    iv
}

pub(super) fn type_ref(ty: &Type) -> TypeRef {
    let inner = match &ty.base {
        BaseType::Named(name) => TypeRef::Named(name_str(name).into()),
        BaseType::List(inner) => TypeRef::List(Box::new(type_ref(inner))),
    };
    if ty.nullable {
        inner
    } else {
        TypeRef::NonNull(Box::new(inner))
    }
}

fn name_str(name: &Name) -> String {
    name.to_string()
}
