//! JSON Web Tokens for the `OPENID_CONNECT` and `AMAZON_COGNITO_USER_POOLS` modes.
//!
//! A token is checked against its provider (chosen by its `iss`): signature with a key from
//! the provider's JWKS (RS256/384/512 or ES256/384; `none` and HMAC are refused), `exp` (no
//! leeway), `nbf` (60 s leeway), the client id in `aud` or `client_id` when one is
//! configured, and for Cognito `token_use` (`id` or `access`; Amplify sends the access
//! token). The JWKS comes from a file or a URL (by default the issuer's OpenID discovery
//! document); it is read again when a token names a key it does not hold, at most every 30 s,
//! so a provider's key rotation needs no restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::domain::{AuthMode, Identity, Millis, Principal};

/// How often the JWKS may be read again for an unknown key id.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// A JWKS held longer than this is read again before use.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// After a failed read, how long callers get that failure without a new attempt.
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
const NBF_LEEWAY_MS: Millis = 60_000;
/// Largest token looked at; larger ones are refused before any decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. Only `Expired` is told to the caller (as AppSync does: "Token has
/// expired."); the rest are logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    UnknownIssuer,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Audience,
    TokenUse,
    NoSubject,
    Jwks(String),
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(String),
}

impl JwksSource {
    /// A URL (`http://`, `https://`) or a file path; `None` means OpenID discovery.
    pub fn parse(spec: Option<&str>, issuer: &str) -> Self {
        match spec.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Self::Url(s.to_owned())
            }
            Some(s) => Self::File(PathBuf::from(s.strip_prefix("file://").unwrap_or(s))),
            None => Self::Discovery(format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )),
        }
    }
}

/// One configured identity provider.
pub struct JwtProvider {
    pub mode: AuthMode,
    issuer: String,
    /// Accepted client ids (`aud` or `client_id`); empty accepts any.
    client_ids: Vec<String>,
    /// Members of any of these groups are admins (read every trace).
    admin_groups: Vec<String>,
    jwks: Jwks,
}

impl JwtProvider {
    pub fn new(
        mode: AuthMode,
        issuer: &str,
        client_ids: Vec<String>,
        admin_groups: Vec<String>,
        source: JwksSource,
    ) -> Self {
        Self {
            mode,
            issuer: issuer.to_owned(),
            client_ids,
            admin_groups,
            jwks: Jwks::new(source),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Reads the keys once at start, so a wrong file or URL shows up in the log right away.
    pub async fn preload(&self) -> Result<(), JwtError> {
        let mut reads = self.jwks.reads.lock().await;
        self.jwks.load(&mut reads).await
    }

    /// Verifies a token already split by [`Token::parse`] and known to name this issuer.
    pub async fn verify(&self, token: &Token, now: Millis) -> Result<Identity, JwtError> {
        let key = self.jwks.key(token.kid.as_deref(), &token.alg).await?;
        key.verify(&token.alg, token.signed.as_bytes(), &token.signature)?;
        let claims = &token.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(JwtError::Malformed)?;
        let exp_ms = (exp * 1000.0) as Millis;
        if now >= exp_ms {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64)
            && now + NBF_LEEWAY_MS < (nbf * 1000.0) as Millis
        {
            return Err(JwtError::NotYetValid);
        }
        if !self.client_ids.is_empty() {
            let aud = match claims.get("aud") {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let client_id = claims.get("client_id").and_then(Value::as_str);
            let ok = aud
                .iter()
                .copied()
                .chain(client_id)
                .any(|id| self.client_ids.iter().any(|c| c == id));
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        if self.mode == AuthMode::CognitoUserPools
            && !matches!(
                claims.get("token_use").and_then(Value::as_str),
                Some("id" | "access")
            )
        {
            return Err(JwtError::TokenUse);
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::NoSubject)?;
        let groups: Vec<String> = claims
            .get("cognito:groups")
            .or_else(|| claims.get("groups"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let prefix = match self.mode {
            AuthMode::CognitoUserPools => "cognito",
            _ => "oidc",
        };
        let admin = groups.iter().any(|g| self.admin_groups.contains(g));
        Ok(Identity {
            principal: Principal {
                id: format!("{prefix}:{sub}"),
                admin,
            },
            mode: self.mode,
            groups,
            expires_at: Some(exp_ms),
        })
    }
}

/// A token split into its parts; nothing in it is trusted yet.
pub struct Token {
    alg: String,
    kid: Option<String>,
    pub claims: Value,
    /// `header.payload`, what the signature covers.
    signed: String,
    signature: Vec<u8>,
}

impl Token {
    /// Accepts the token raw or after `Bearer `.
    pub fn parse(value: &str) -> Result<Self, JwtError> {
        let raw = value.trim();
        let raw = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .unwrap_or(raw)
            .trim();
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let mut parts = raw.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| JwtError::Malformed)
        };
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        let claims: Value = serde_json::from_slice(&decode(p)?).map_err(|_| JwtError::Malformed)?;
        if !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed)?
            .to_owned();
        Ok(Self {
            alg,
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            claims,
            signed: format!("{h}.{p}"),
            signature: decode(s)?,
        })
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { alg: &'static str, point: Vec<u8> },
}

struct Jwk {
    key: PublicKey,
    /// The key's own `alg`, when it names one: a token must use exactly that.
    alg: Option<String>,
}

impl Jwk {
    fn parse(v: &Value) -> Option<Self> {
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
        };
        if v.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            return None;
        }
        let key = match v.get("kty").and_then(Value::as_str)? {
            "RSA" => PublicKey::Rsa {
                n: field("n")?,
                e: field("e")?,
            },
            "EC" => {
                let (alg, len) = match v.get("crv").and_then(Value::as_str)? {
                    "P-256" => ("ES256", 32),
                    "P-384" => ("ES384", 48),
                    _ => return None,
                };
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != len || y.len() != len {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { alg, point }
            }
            _ => return None,
        };
        Some(Self {
            key,
            alg: v.get("alg").and_then(Value::as_str).map(str::to_owned),
        })
    }

    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), JwtError> {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return Err(JwtError::Algorithm);
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    _ => return Err(JwtError::Algorithm),
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .map_err(|_| JwtError::Signature)
            }
            PublicKey::Ec {
                alg: key_alg,
                point,
            } => {
                if alg != *key_alg {
                    return Err(JwtError::Algorithm);
                }
                let algorithm: &'static dyn VerificationAlgorithm = match alg {
                    "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
                    _ => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, sig)
                    .map_err(|_| JwtError::Signature)
            }
        }
    }
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Jwk>>,
    /// Keys without a `kid`, used only when the set holds exactly one key.
    anonymous: Vec<Arc<Jwk>>,
    loaded_at: Option<Instant>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<Jwk>> {
        match kid {
            Some(kid) => self.keys.get(kid).cloned(),
            None if self.keys.len() + self.anonymous.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.keys.values().next())
                .cloned(),
            None => None,
        }
    }

    fn fresh(&self) -> bool {
        self.loaded_at.is_some_and(|t| t.elapsed() < MAX_AGE)
    }
}

/// The bookkeeping of reads of the provider, under the one-read-at-a-time lock.
#[derive(Default)]
struct Reads {
    /// The last read caused by an unknown key id (those are rate-limited).
    missed_at: Option<Instant>,
    /// The last read that failed: for a few seconds after, callers get the error at once
    /// instead of queueing behind another slow read of an unreachable provider.
    failed: Option<(Instant, String)>,
}

struct Jwks {
    source: JwksSource,
    /// The keys in use. Verifying takes a snapshot and never waits for a read.
    set: std::sync::RwLock<Arc<KeySet>>,
    /// One read of the provider at a time.
    reads: Mutex<Reads>,
}

impl Jwks {
    fn new(source: JwksSource) -> Self {
        Self {
            source,
            set: std::sync::RwLock::new(Arc::new(KeySet::default())),
            reads: Mutex::new(Reads::default()),
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn key(&self, kid: Option<&str>, alg: &str) -> Result<Arc<Jwk>, JwtError> {
        if !matches!(alg, "RS256" | "RS384" | "RS512" | "ES256" | "ES384") {
            return Err(JwtError::Algorithm);
        }
        let set = self.snapshot();
        if let Some(key) = set.find(kid) {
            if !set.fresh()
                && let Ok(mut reads) = self.reads.try_lock()
            {
                // Old keys still verify; the caller that got the lock renews them (a failure
                // keeps the old set), nobody else waits for it.
                let _ = self.load(&mut reads).await;
            }
            return Ok(key);
        }
        // A key id the set does not hold (rotation), or no set yet: read the provider, one
        // caller at a time; the others find the new set when they get the lock.
        let mut reads = self.reads.lock().await;
        let set = self.snapshot();
        if let Some(key) = set.find(kid) {
            return Ok(key);
        }
        if set.fresh() {
            if reads
                .missed_at
                .is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL)
            {
                return Err(JwtError::UnknownKey);
            }
            reads.missed_at = Some(Instant::now());
        }
        self.load(&mut reads).await?;
        self.snapshot().find(kid).ok_or(JwtError::UnknownKey)
    }

    /// Reads the provider's keys and makes them the set in use.
    async fn load(&self, reads: &mut Reads) -> Result<(), JwtError> {
        if let Some((at, error)) = &reads.failed
            && at.elapsed() < FAILURE_BACKOFF
        {
            return Err(JwtError::Jwks(error.clone()));
        }
        let document = match self.fetch().await {
            Ok(document) => document,
            Err(e) => {
                reads.failed = Some((Instant::now(), e.clone()));
                return Err(JwtError::Jwks(e));
            }
        };
        reads.failed = None;
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwtError::Jwks("the JWKS has no `keys` array".into()))?;
        let mut set = KeySet {
            loaded_at: Some(Instant::now()),
            ..KeySet::default()
        };
        for k in keys {
            let Some(jwk) = Jwk::parse(k) else { continue };
            match k.get("kid").and_then(Value::as_str) {
                Some(kid) => {
                    set.keys.insert(kid.to_owned(), Arc::new(jwk));
                }
                None => set.anonymous.push(Arc::new(jwk)),
            }
        }
        if set.keys.is_empty() && set.anonymous.is_empty() {
            return Err(JwtError::Jwks(
                "the JWKS holds no usable signing key".into(),
            ));
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    async fn fetch(&self) -> Result<Value, String> {
        match &self.source {
            JwksSource::File(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            JwksSource::Url(url) => get_json(url).await,
            JwksSource::Discovery(url) => {
                let discovery = get_json(url).await?;
                let jwks_uri = discovery
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{url} names no jwks_uri"))?;
                get_json(jwks_uri).await
            }
        }
    }
}

async fn get_json(url: &str) -> Result<Value, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    let client = CLIENT
        .get_or_init(|| {
            // reqwest's rustls takes the process's crypto provider: aws-lc-rs, as for the server.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > 1 << 20) {
        return Err(format!("GET {url}: the document exceeds 1 MiB"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if body.len() > 1 << 20 {
        return Err(format!("GET {url}: the document exceeds 1 MiB"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const ISSUER: &str = "https://issuer.example";

    struct Signer {
        pair: EcdsaKeyPair,
        kid: String,
    }

    impl Signer {
        fn new(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            Self {
                pair,
                kid: kid.into(),
            }
        }

        fn jwk(&self) -> Value {
            let point = self.pair.public_key().as_ref();
            json!({ "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]) })
        }

        fn sign(&self, header: Value, claims: Value) -> String {
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        fn token(&self, claims: Value) -> String {
            self.sign(json!({ "alg": "ES256", "kid": self.kid }), claims)
        }
    }

    fn provider(dir: &std::path::Path, keys: &[&Signer], mode: AuthMode) -> JwtProvider {
        let path = dir.join("jwks.json");
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
        std::fs::write(&path, jwks.to_string()).unwrap();
        JwtProvider::new(
            mode,
            ISSUER,
            vec!["client-1".into()],
            vec!["ops".into()],
            JwksSource::File(path),
        )
    }

    fn claims(exp_in_s: i64) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": ISSUER, "sub": "u-1", "aud": "client-1", "exp": now + exp_in_s,
                "token_use": "id", "cognito:groups": ["ops"] })
    }

    async fn check(p: &JwtProvider, token: &str) -> Result<Identity, JwtError> {
        p.verify(&Token::parse(token)?, crate::domain::now_millis())
            .await
    }

    #[tokio::test]
    async fn good_tokens_pass_and_each_defect_fails() {
        let dir = tempdir("jwt-defects");
        let signer = Signer::new("k1");
        let p = provider(&dir, &[&signer], AuthMode::CognitoUserPools);
        let who = check(&p, &signer.token(claims(60))).await.unwrap();
        assert_eq!(who.principal.id, "cognito:u-1");
        assert!(who.principal.admin);
        assert_eq!(who.groups, ["ops"]);
        // Bearer and raw both work.
        let bearer = format!("Bearer {}", signer.token(claims(60)));
        assert!(check(&p, &bearer).await.is_ok());

        assert_eq!(
            check(&p, &signer.token(claims(-1))).await,
            Err(JwtError::Expired)
        );
        let mut wrong_aud = claims(60);
        wrong_aud["aud"] = json!("client-2");
        assert_eq!(
            check(&p, &signer.token(wrong_aud)).await,
            Err(JwtError::Audience)
        );
        let mut no_use = claims(60);
        no_use.as_object_mut().unwrap().remove("token_use");
        assert_eq!(
            check(&p, &signer.token(no_use)).await,
            Err(JwtError::TokenUse)
        );
        // Signed by a key the provider does not hold, under a known kid: forged.
        let forger = Signer::new("k1");
        assert_eq!(
            check(&p, &forger.token(claims(60))).await,
            Err(JwtError::Signature)
        );
        // `alg: none` and HMAC are never accepted, whatever the signature says.
        let good = signer.token(claims(60));
        let (_, rest) = good.split_once('.').unwrap();
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "kid": "k1" }).to_string());
            assert_eq!(
                check(&p, &format!("{header}.{rest}")).await,
                Err(JwtError::Algorithm),
                "{alg}"
            );
        }
        // A changed claim breaks the signature.
        let parts: Vec<&str> = good.split('.').collect();
        let mut other = claims(60);
        other["sub"] = json!("admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(other.to_string()),
            parts[2]
        );
        assert_eq!(check(&p, &tampered).await, Err(JwtError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(check(&p, junk).await.is_err(), "{junk}");
        }
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_from_the_jwks() {
        let dir = tempdir("jwt-rotation");
        let old = Signer::new("old");
        let p = provider(&dir, &[&old], AuthMode::Oidc);
        p.preload().await.unwrap();
        assert!(check(&p, &old.token(claims(60))).await.is_ok());
        let new = Signer::new("new");
        std::fs::write(
            dir.join("jwks.json"),
            json!({ "keys": [old.jwk(), new.jwk()] }).to_string(),
        )
        .unwrap();
        let who = check(&p, &new.token(claims(60))).await.unwrap();
        assert_eq!(who.principal.id, "oidc:u-1");
        // Unknown again right after: the set is not read twice within the interval.
        let third = Signer::new("third");
        assert_eq!(
            check(&p, &third.token(claims(60))).await,
            Err(JwtError::UnknownKey)
        );
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
