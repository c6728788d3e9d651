//! Credentials for tests: SigV4 signatures made by AWS's own signer (`aws-sigv4`, what the
//! AWS SDKs use) and JWTs from a test identity provider whose keys tether reads from a JWKS
//! file or URL.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The IAM key the test server trusts (`test_config`).
pub const IAM_AKID: &str = "AKIDTETHERTEST";
pub const IAM_SECRET: &str = "tether/test/secret+key";
pub const IAM_REGION: &str = "us-east-1";

/// Headers for a `POST` to `url` with `body`, signed by `aws-sigv4` with `secret` at `time`.
/// The content headers are the ones AppSync clients sign over the real-time handshake.
pub fn sigv4_headers(
    url: &str,
    body: &[u8],
    akid: &str,
    secret: &str,
    time: SystemTime,
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("a URL with a host");
    let mut headers = vec![
        (
            "accept".to_owned(),
            "application/json, text/javascript".to_owned(),
        ),
        ("content-encoding".to_owned(), "amz-1.0".to_owned()),
        (
            "content-type".to_owned(),
            "application/json; charset=UTF-8".to_owned(),
        ),
        ("host".to_owned(), host.to_owned()),
    ];
    let identity =
        aws_credential_types::Credentials::new(akid, secret, None, None, "tether-tests").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(IAM_REGION)
        .name("appsync")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("signing").into_parts();
    let (added, _) = instructions.into_parts();
    for h in added {
        headers.push((h.name().to_owned(), h.value().to_owned()));
    }
    headers
}

/// The same headers as an AppSync authorization header object.
pub fn sigv4_object(url: &str, body: &[u8], secret: &str, time: SystemTime) -> Value {
    let map: serde_json::Map<String, Value> = sigv4_headers(url, body, IAM_AKID, secret, time)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Value::Object(map)
}

/// A test identity provider: an ES256 key, its JWKS in a file, tokens on demand.
pub struct Issuer {
    pub issuer: String,
    pub client_id: String,
    pub jwks_path: PathBuf,
    key: EcdsaKeyPair,
    kid: String,
}

impl Issuer {
    pub fn new(dir: &Path, issuer: &str, client_id: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let jwks_path = dir.join(format!("jwks-{}.json", uuid::Uuid::new_v4().simple()));
        let me = Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            jwks_path,
            key,
            kid: format!("kid-{}", uuid::Uuid::new_v4().simple()),
        };
        std::fs::write(&me.jwks_path, me.jwks().to_string()).unwrap();
        me
    }

    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]) }] })
    }

    /// Standard claims for `sub`, valid for `ttl_s` seconds (negative: already expired).
    pub fn claims(&self, sub: &str, ttl_s: i64) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.issuer, "sub": sub, "aud": self.client_id, "client_id": self.client_id,
                "token_use": "access", "iat": now, "exp": now + ttl_s })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    pub fn token(&self, sub: &str, ttl_s: i64) -> String {
        self.sign(&self.claims(sub, ttl_s))
    }
}

/// The shipped schema, annotated the way an AppSync API with API_KEY as default plus OIDC and
/// Cognito would be: every object type names the modes that may read it (naming any mode
/// replaces the default), `deadLetters` is for the Cognito group `ops` only, and
/// subscriptions are open to API keys, OIDC and IAM but not to Cognito users (to show a
/// refused subscription).
pub fn multi_mode_schema(dir: &Path) -> PathBuf {
    let mut sdl = tether::schema::DEFAULT_SDL.to_owned();
    let all = "@aws_api_key @aws_oidc @aws_cognito_user_pools";
    for ty in [
        "Query",
        "Mutation",
        "CommandAccepted",
        "Trace",
        "DeadLetter",
        "DeadLetterPage",
    ] {
        let from = format!("type {ty} {{");
        assert!(sdl.contains(&from), "{from}");
        sdl = sdl.replace(&from, &format!("type {ty} {all} {{"));
    }
    for (from, to) in [
        (
            "type Subscription {",
            "type Subscription @aws_api_key @aws_oidc @aws_iam {",
        ),
        (
            "type TraceEvent @aws_api_key @aws_iam {",
            "type TraceEvent @aws_api_key @aws_iam @aws_oidc @aws_cognito_user_pools {",
        ),
        (
            "deadLetters(limit: Int, nextToken: String): DeadLetterPage!",
            "deadLetters(limit: Int, nextToken: String): DeadLetterPage! @aws_cognito_user_pools(cognito_groups: [\"ops\"])",
        ),
    ] {
        assert!(sdl.contains(from), "{from}");
        sdl = sdl.replace(from, to);
    }
    let path = dir.join("schema-multi-mode.graphql");
    std::fs::write(&path, sdl).unwrap();
    path
}

/// Serves `jwks` at `http://<addr>/jwks.json` until the runtime ends.
pub async fn serve_jwks(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}
