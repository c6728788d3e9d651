//! The `@aws_*` authorization directives, enforced with AppSync's precedence.
//!
//! * A field with auth directives admits exactly the modes they name.
//! * Otherwise its type's directives decide.
//! * A field and type with none admit the default mode only. Naming any mode on a type or
//!   field replaces the default there; it is not added implicitly.
//! * `@aws_cognito_user_pools(cognito_groups: [...])` (and the older `@aws_auth`) admits
//!   user-pool callers in one of the groups; without the argument, any user-pool caller.
//! * `@aws_lambda` is accepted in the schema but no caller has that mode here.
//!
//! A refused field resolves to null with `Not Authorized to access <field> on type <Type>`
//! (HTTP 200, as AppSync does). Queries and mutations are checked field by field by an
//! async-graphql extension; subscriptions when they are prepared (`live.rs`), for the root
//! field and every field of the selection.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo,
};
use async_graphql::parser::types::{ConstDirective, TypeKind};
use async_graphql::{Positioned, ServerResult, Value};

use super::SchemaDoc;
use super::errors;
use crate::domain::{AuthMode, Identity};

/// One mode a directive admits.
#[derive(Debug, Clone)]
struct Allow {
    /// `None` for `@aws_lambda`: a mode no caller has here.
    mode: Option<AuthMode>,
    /// User-pool groups, one of which the caller must be in.
    groups: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct AuthRules {
    default: AuthMode,
    types: HashMap<String, Vec<Allow>>,
    fields: HashMap<(String, String), Vec<Allow>>,
}

impl AuthRules {
    pub fn new(doc: &SchemaDoc, default: AuthMode) -> Self {
        let mut rules = Self {
            default,
            types: HashMap::new(),
            fields: HashMap::new(),
        };
        for name in &doc.order {
            let def = &doc.types[name];
            // `Some(vec![])` (only `@aws_lambda`) is a rule too: it admits no one here.
            if let Some(allows) = allows_of(&def.directives) {
                rules.types.insert(name.clone(), allows);
            }
            if let TypeKind::Object(o) = &def.kind {
                for f in &o.fields {
                    let allows = allows_of(&f.node.directives);
                    if let Some(allows) = allows {
                        rules
                            .fields
                            .insert((name.clone(), f.node.name.node.to_string()), allows);
                    }
                }
            }
        }
        rules
    }

    /// May `who` read `field` of `type_name`?
    pub fn allows(&self, type_name: &str, field: &str, who: &Identity) -> bool {
        if who.mode == AuthMode::Open || field.starts_with("__") {
            return true;
        }
        let rule = self
            .fields
            .get(&(type_name.to_owned(), field.to_owned()))
            .or_else(|| self.types.get(type_name));
        match rule {
            None => who.mode == self.default,
            Some(allows) => allows.iter().any(|a| {
                a.mode == Some(who.mode)
                    && a.groups
                        .as_ref()
                        .is_none_or(|groups| groups.iter().any(|g| who.groups.contains(g)))
            }),
        }
    }
}

/// The auth directives among `directives`; `None` when there are none (an empty list means
/// "only `@aws_lambda`", which admits no one here).
fn allows_of(directives: &[Positioned<ConstDirective>]) -> Option<Vec<Allow>> {
    let mut found = false;
    let mut out = Vec::new();
    for d in directives {
        let d = &d.node;
        let mode = match d.name.node.as_str() {
            "aws_api_key" => Some(AuthMode::ApiKey),
            "aws_iam" => Some(AuthMode::Iam),
            "aws_oidc" => Some(AuthMode::Oidc),
            "aws_cognito_user_pools" | "aws_auth" => Some(AuthMode::CognitoUserPools),
            "aws_lambda" => None,
            _ => continue,
        };
        found = true;
        let groups = d
            .get_argument("cognito_groups")
            .map(|_| super::directive_strings(d, "cognito_groups"));
        out.push(Allow { mode, groups });
    }
    found.then_some(out)
}

/// Checks every resolved field of a query or mutation against [`AuthRules`].
pub struct Enforce(pub Arc<AuthRules>);

impl ExtensionFactory for Enforce {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(EnforceExt(self.0.clone()))
    }
}

struct EnforceExt(Arc<AuthRules>);

#[async_trait::async_trait]
impl Extension for EnforceExt {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        // async-graphql also calls this for each item of a list, with the list type
        // (`[T]`) as parent: the field itself was checked already.
        if !info.is_for_introspection && !info.parent_type.starts_with('[') {
            let allowed = ctx
                .data_opt::<Identity>()
                .is_some_and(|who| self.0.allows(info.parent_type, info.name, who));
            if !allowed {
                return Err(errors::unauthorized(info.name, info.parent_type)
                    .into_server_error(info.field.name.pos));
            }
        }
        next.run(ctx, info).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Principal;

    fn who(mode: AuthMode, groups: &[&str]) -> Identity {
        Identity {
            principal: Principal {
                id: "x".into(),
                admin: false,
            },
            mode,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: None,
        }
    }

    #[test]
    fn field_over_type_over_default() {
        let doc = SchemaDoc::parse(
            r#"
            type Query {
              open: Int
              iamOnly: Int @aws_iam
              ops: Int @aws_cognito_user_pools(cognito_groups: ["ops"])
              anyUser: Int @aws_cognito_user_pools
              lambda: Int @aws_lambda
              item: Item
              lambdaThing: LambdaOnly
            }
            type LambdaOnly @aws_lambda { x: Int }
            type Item @aws_api_key @aws_oidc {
              a: Int
              b: Int @aws_iam
            }
            "#,
        )
        .unwrap();
        let rules = AuthRules::new(&doc, AuthMode::ApiKey);
        let key = who(AuthMode::ApiKey, &[]);
        let iam = who(AuthMode::Iam, &[]);
        let oidc = who(AuthMode::Oidc, &[]);
        let ops = who(AuthMode::CognitoUserPools, &["ops"]);
        let user = who(AuthMode::CognitoUserPools, &["users"]);
        // No directive: the default mode alone.
        assert!(rules.allows("Query", "open", &key));
        assert!(!rules.allows("Query", "open", &iam));
        // A field directive replaces the default.
        assert!(rules.allows("Query", "iamOnly", &iam));
        assert!(!rules.allows("Query", "iamOnly", &key));
        // Groups.
        assert!(rules.allows("Query", "ops", &ops));
        assert!(!rules.allows("Query", "ops", &user));
        assert!(rules.allows("Query", "anyUser", &user));
        assert!(!rules.allows("Query", "lambda", &key));
        // Type directives for fields without their own; a field's own win.
        assert!(rules.allows("Item", "a", &oidc));
        assert!(rules.allows("Item", "a", &key));
        assert!(!rules.allows("Item", "a", &iam));
        assert!(rules.allows("Item", "b", &iam));
        assert!(!rules.allows("Item", "b", &key));
        assert!(rules.allows("Item", "__typename", &iam));
        // A type that names only a mode tether does not have admits no one, not the default.
        assert!(!rules.allows("LambdaOnly", "x", &key));
        assert!(rules.allows("Query", "iamOnly", &who(AuthMode::Open, &[])));
    }
}
