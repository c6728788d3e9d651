//! Who is calling: AppSync's authorization modes on every surface (HTTP, the WebSocket
//! handshake, each `start`).
//!
//! * `API_KEY`: `x-api-key`. Keys come from the configuration; in embedded mode without
//!   configured keys, one is generated, kept in the database and printed at start.
//! * `OPENID_CONNECT` and `AMAZON_COGNITO_USER_POOLS`: a JWT in `Authorization`, raw or
//!   `Bearer` ([`jwt`]).
//! * `AWS_IAM`: SigV4 with keys shared with the server ([`sigv4`]).
//!
//! A request is matched to a mode by what it carries, as AppSync does: an `Authorization`
//! that starts with `AWS4-HMAC-SHA256` is IAM, another `Authorization` is a JWT (its issuer
//! picks the provider), else `x-api-key`. A mode that is not enabled refuses. Which fields
//! each mode may then reach is the schema's business (`@aws_*` directives, `schema::auth`).

pub mod jwt;
pub mod sigv4;

use std::collections::HashMap;

use axum::http::HeaderMap;

use crate::domain::{AuthMode, Identity, Millis, Principal};
use jwt::{JwtError, JwtProvider, Token};
use sigv4::SigV4;

pub const API_KEY_HEADER: &str = "x-api-key";

/// Request headers, names lower-cased: from an HTTP request, an AppSync authorization header
/// object, or a `connection_init` payload.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn from_http(headers: &HeaderMap) -> Self {
        Self(
            headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
        )
    }

    /// `{"host": …, "x-api-key": …}` or `{"Authorization": …}`; non-string values are ignored.
    pub fn from_object(object: &serde_json::Value) -> Self {
        Self(
            object
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(name, value)| {
                    Some((name.to_ascii_lowercase(), value.as_str()?.to_owned()))
                })
                .collect(),
        )
    }

    /// A `connection_init` payload: the headers themselves, or under `headers`; `apiKey` and
    /// `authToken` are accepted as aliases.
    pub fn from_init_payload(payload: &serde_json::Value) -> Self {
        let mut headers = match payload.get("headers") {
            Some(inner) if inner.is_object() => Self::from_object(inner),
            _ => Self::from_object(payload),
        };
        for (alias, name) in [("apikey", API_KEY_HEADER), ("authtoken", "authorization")] {
            if headers.get(name).is_none()
                && let Some(value) = headers.get(alias).map(str::to_owned)
            {
                headers.push(name, value);
            }
        }
        headers
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order (a header sent twice).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    #[cfg(test)]
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.push(name, value);
    }
}

/// What a SigV4 signature covers: the path that was signed and the body (always a `POST`).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub path: &'a str,
    pub body: &'a [u8],
}

/// A refused request. Every refusal reads "You are not authorized to make this call." except
/// an expired token, which says so (clients refresh on it); the reason is logged, not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Unauthorized,
    Expired,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Self::Unauthorized => "You are not authorized to make this call.",
            Self::Expired => "Token has expired.",
        }
    }
}

pub struct Authenticator {
    /// The default mode first, then the additional ones.
    modes: Vec<AuthMode>,
    /// Open access: everyone is `anonymous`. Only when configured explicitly.
    open: bool,
    /// API key secret → principal.
    keys: HashMap<String, Principal>,
    iam: Option<SigV4>,
    jwt: Vec<JwtProvider>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("modes", &self.modes)
            .field("open", &self.open)
            .field("api_keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn open() -> Self {
        Self {
            modes: vec![AuthMode::Open],
            open: true,
            keys: HashMap::new(),
            iam: None,
            jwt: Vec::new(),
        }
    }

    /// API keys only (the default mode `API_KEY`).
    #[cfg(test)]
    pub fn with_keys(keys: impl IntoIterator<Item = (String, Principal)>) -> Self {
        Self {
            modes: vec![AuthMode::ApiKey],
            open: false,
            keys: keys.into_iter().collect(),
            iam: None,
            jwt: Vec::new(),
        }
    }

    /// Enables `modes` (the default first). Each mode needs its settings: keys for
    /// `API_KEY` and `AWS_IAM`, a provider for the JWT modes.
    pub fn new(
        modes: Vec<AuthMode>,
        keys: Vec<(String, Principal)>,
        iam: Option<SigV4>,
        jwt: Vec<JwtProvider>,
    ) -> Result<Self, String> {
        for mode in &modes {
            let ready = match mode {
                AuthMode::ApiKey => !keys.is_empty(),
                AuthMode::Iam => iam.is_some(),
                AuthMode::Oidc | AuthMode::CognitoUserPools => jwt.iter().any(|p| p.mode == *mode),
                AuthMode::Open => false,
            };
            if !ready {
                return Err(format!("{} is enabled but not configured", mode.name()));
            }
        }
        if iam.is_some() && !modes.contains(&AuthMode::Iam) {
            return Err("IAM keys are configured but AWS_IAM is not an enabled mode".into());
        }
        if let Some(p) = jwt.iter().find(|p| !modes.contains(&p.mode)) {
            return Err(format!(
                "an issuer is configured for {} but that mode is not enabled",
                p.mode.name()
            ));
        }
        Ok(Self {
            modes,
            open: false,
            keys: keys.into_iter().collect(),
            iam,
            jwt,
        })
    }

    /// The default mode: fields without `@aws_*` directives admit it alone.
    pub fn default_mode(&self) -> AuthMode {
        self.modes[0]
    }

    pub fn providers(&self) -> &[JwtProvider] {
        &self.jwt
    }

    /// Parses `principal:secret,secret2,...`. A key without a principal name gets one derived
    /// from its position, so two keys never share an owner by accident.
    pub fn parse_keys(spec: &str, admin: bool, prefix: &str) -> Vec<(String, Principal)> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, entry)| {
                let (id, secret) = match entry.split_once(':') {
                    Some((id, secret)) if !id.is_empty() => (id.to_owned(), secret.to_owned()),
                    _ => (format!("{prefix}{}", i + 1), entry.to_owned()),
                };
                (secret, Principal { id, admin })
            })
            .collect()
    }

    /// Authenticates a request. `signed` is what a SigV4 signature must cover; where the
    /// protocol defines none (`graphql-transport-ws`), IAM is refused.
    pub async fn authenticate(
        &self,
        headers: &Headers,
        signed: Option<Signed<'_>>,
    ) -> Result<Identity, Denied> {
        let now = crate::domain::now_millis();
        if self.open {
            return Ok(Identity::new(
                Principal {
                    id: "anonymous".into(),
                    admin: false,
                },
                AuthMode::Open,
            ));
        }
        let enabled = |mode| self.modes.contains(&mode);
        if let Some(authorization) = headers.get("authorization").filter(|v| !v.is_empty()) {
            if authorization.starts_with("AWS4-HMAC-SHA256") {
                let (Some(iam), Some(signed)) = (&self.iam, signed) else {
                    return Err(refuse(AuthMode::Iam, &"not enabled here"));
                };
                return match iam.verify(headers, signed.path, signed.body, now) {
                    Ok(principal) => Ok(Identity::new(principal, AuthMode::Iam)),
                    Err(e) => Err(refuse(AuthMode::Iam, &e)),
                };
            }
            if enabled(AuthMode::Oidc) || enabled(AuthMode::CognitoUserPools) {
                return self.verify_jwt(authorization, now).await;
            }
        }
        if enabled(AuthMode::ApiKey)
            && let Some(key) = headers.get(API_KEY_HEADER)
        {
            return self
                .keys
                .get(key.trim())
                .map(|p| Identity::new(p.clone(), AuthMode::ApiKey))
                .ok_or_else(|| refuse(AuthMode::ApiKey, &"unknown key"));
        }
        Err(Denied::Unauthorized)
    }

    async fn verify_jwt(&self, authorization: &str, now: Millis) -> Result<Identity, Denied> {
        let token = Token::parse(authorization).map_err(|e| refuse(AuthMode::Oidc, &e))?;
        let issuer = token.issuer().unwrap_or_default();
        let Some(provider) = self.jwt.iter().find(|p| p.issuer() == issuer) else {
            return Err(refuse(AuthMode::Oidc, &JwtError::UnknownIssuer));
        };
        provider.verify(&token, now).await.map_err(|e| match e {
            JwtError::Expired => Denied::Expired,
            e => refuse(provider.mode, &e),
        })
    }
}

fn refuse(mode: AuthMode, reason: &dyn std::fmt::Debug) -> Denied {
    tracing::debug!(auth.mode = mode.name(), reason = ?reason, "request refused");
    Denied::Unauthorized
}

/// A new random API key.
pub fn generate_key() -> String {
    format!(
        "tk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Headers {
        Headers::from_pairs([(API_KEY_HEADER, k)])
    }

    #[tokio::test]
    async fn keys_map_to_their_principals() {
        let mut keys = Authenticator::parse_keys("alice:k1, k2", false, "key-");
        keys.extend(Authenticator::parse_keys("ops:k3", true, "admin-"));
        let auth = Authenticator::with_keys(keys);
        let who = |k: &'static str| {
            let auth = &auth;
            async move { auth.authenticate(&key(k), None).await }
        };
        assert_eq!(who("k1").await.unwrap().principal.id, "alice");
        assert_eq!(who("k2").await.unwrap().principal.id, "key-2");
        assert!(who("k3").await.unwrap().principal.admin);
        assert_eq!(who("nope").await, Err(Denied::Unauthorized));
        assert_eq!(
            auth.authenticate(&Headers::default(), None).await,
            Err(Denied::Unauthorized)
        );
    }

    #[tokio::test]
    async fn a_mode_that_is_not_enabled_refuses() {
        let auth = Authenticator::with_keys([(
            "k1".to_owned(),
            Principal {
                id: "alice".into(),
                admin: false,
            },
        )]);
        // A signature or a token where neither IAM nor JWT modes are on: refused, not
        // silently read as "no credentials, try the key".
        let mut h = key("k1");
        h.push("authorization", "AWS4-HMAC-SHA256 Credential=x");
        assert_eq!(
            auth.authenticate(
                &h,
                Some(Signed {
                    path: "/graphql",
                    body: b""
                })
            )
            .await,
            Err(Denied::Unauthorized)
        );
        assert!(Authenticator::new(vec![AuthMode::Iam], vec![], None, vec![]).is_err());
        assert!(
            Authenticator::new(
                vec![AuthMode::ApiKey],
                vec![(
                    "k".into(),
                    Principal {
                        id: "a".into(),
                        admin: false
                    }
                )],
                Some(SigV4::parse("w:A:S", "us-east-1").unwrap()),
                vec![]
            )
            .is_err()
        );
    }

    #[test]
    fn init_payloads_and_header_objects_read_case_insensitively() {
        let h = Headers::from_init_payload(&serde_json::json!({ "apiKey": "k" }));
        assert_eq!(h.get("x-api-key"), Some("k"));
        let h = Headers::from_init_payload(
            &serde_json::json!({ "headers": { "Authorization": "t", "X-Api-Key": "k" } }),
        );
        assert_eq!(h.get("authorization"), Some("t"));
        assert_eq!(h.get("x-api-key"), Some("k"));
    }
}
