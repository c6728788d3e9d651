//! API-key authentication (`x-api-key`). Keys come from the configuration; in embedded mode
//! without configured keys, one is generated, kept in the database and printed at start.

use std::collections::HashMap;

use axum::http::HeaderMap;

use crate::domain::Principal;

pub const API_KEY_HEADER: &str = "x-api-key";

#[derive(Debug, Clone)]
pub struct Authenticator {
    /// secret → principal.
    keys: HashMap<String, Principal>,
    /// Open access: everyone is `anonymous`. Only when configured explicitly.
    open: bool,
}

impl Authenticator {
    pub fn open() -> Self {
        Self {
            keys: HashMap::new(),
            open: true,
        }
    }

    pub fn with_keys(keys: impl IntoIterator<Item = (String, Principal)>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            open: false,
        }
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

    /// The principal a key belongs to.
    pub fn check_key(&self, key: Option<&str>) -> Option<Principal> {
        if self.open {
            return Some(Principal {
                id: "anonymous".into(),
                admin: false,
            });
        }
        self.keys.get(key?.trim()).cloned()
    }

    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Principal> {
        self.check_key(headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()))
    }

    /// From a WebSocket `connection_init` payload: `{"x-api-key": …}`, `{"apiKey": …}` or
    /// `{"headers": {"x-api-key": …}}`.
    pub fn from_init_payload(&self, payload: &serde_json::Value) -> Option<Principal> {
        let key = payload
            .get(API_KEY_HEADER)
            .or_else(|| payload.get("apiKey"))
            .or_else(|| payload.get("headers").and_then(|h| h.get(API_KEY_HEADER)))
            .and_then(|v| v.as_str());
        self.check_key(key)
    }

    /// From an AppSync authorization header object (the `header` of the real-time handshake,
    /// or a `start`'s `extensions.authorization`): `{"host": …, "x-api-key": …}`. Header names
    /// are case-insensitive.
    pub fn from_header_object(&self, object: &serde_json::Value) -> Option<Principal> {
        let key = object.as_object()?.iter().find_map(|(name, value)| {
            name.eq_ignore_ascii_case(API_KEY_HEADER)
                .then(|| value.as_str())
                .flatten()
        });
        self.check_key(key)
    }
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

    #[test]
    fn keys_map_to_their_principals() {
        let mut keys = Authenticator::parse_keys("alice:k1, k2", false, "key-");
        keys.extend(Authenticator::parse_keys("ops:k3", true, "admin-"));
        let auth = Authenticator::with_keys(keys);
        assert_eq!(auth.check_key(Some("k1")).unwrap().id, "alice");
        assert_eq!(auth.check_key(Some("k2")).unwrap().id, "key-2");
        assert!(auth.check_key(Some("k3")).unwrap().admin);
        assert_eq!(auth.check_key(Some("nope")), None);
        assert_eq!(auth.check_key(None), None);
    }
}
