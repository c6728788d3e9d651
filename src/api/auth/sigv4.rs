//! AWS Signature Version 4 for the `AWS_IAM` mode, verified with static keys the server holds
//! (the way a remote `tether worker` publishes). A self-hosted server cannot ask AWS whether a
//! real IAM signature is good; it can only recompute the signature with a shared secret.
//!
//! What is signed (`reference/appsync.md` §1.3): `POST` to the GraphQL path with the request
//! body over HTTP; `POST …/graphql/connect` with the body `{}` for a real-time handshake; `POST
//! …/graphql` with the `start`'s `payload.data` string for each subscription. Service
//! `appsync`, the configured region, `x-amz-date` within five minutes of the server's clock.

use std::collections::HashMap;
use std::fmt::Write as _;

use aws_lc_rs::{digest, hmac};
use chrono::NaiveDateTime;

use super::Headers;
use crate::domain::{Millis, Principal};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "appsync";
/// How far `x-amz-date` may be from the server's clock, either way (AWS allows 5 minutes).
pub const MAX_SKEW_MS: Millis = 5 * 60 * 1000;

/// Why a signature was refused. Logged, never sent: every refusal looks the same to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    Malformed,
    UnknownKey,
    /// Wrong service or region, or a credential date that is not the request's date.
    Scope,
    Stale,
    Mismatch,
}

struct Key {
    secret: String,
    principal: Principal,
}

pub struct SigV4 {
    /// access key id → secret and the principal it stands for.
    keys: HashMap<String, Key>,
    region: String,
}

impl SigV4 {
    /// Parses `principal:ACCESS_KEY_ID:SECRET,…`. IAM principals are workers and operators:
    /// they are admins (they publish into any trace).
    pub fn parse(spec: &str, region: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(akid), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("each IAM key is principal:ACCESS_KEY_ID:SECRET".into());
            };
            if id.is_empty() || akid.is_empty() || secret.is_empty() {
                return Err("each IAM key is principal:ACCESS_KEY_ID:SECRET".into());
            }
            let principal = Principal {
                id: format!("iam:{id}"),
                admin: true,
            };
            keys.insert(
                akid.to_owned(),
                Key {
                    secret: secret.to_owned(),
                    principal,
                },
            );
        }
        if keys.is_empty() {
            return Err("AWS_IAM needs at least one key (--iam-keys)".into());
        }
        Ok(Self {
            keys,
            region: region.to_owned(),
        })
    }

    /// Checks the `Authorization: AWS4-HMAC-SHA256 …` of a `POST` to `path` carrying `body`.
    pub fn verify(
        &self,
        headers: &Headers,
        path: &str,
        body: &[u8],
        now: Millis,
    ) -> Result<Principal, SigError> {
        let auth = headers.get("authorization").ok_or(SigError::Malformed)?;
        let fields = auth
            .strip_prefix(ALGORITHM)
            .filter(|rest| rest.starts_with(' '))
            .ok_or(SigError::Malformed)?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in fields.split(',') {
            match part.trim().split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed_headers = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => return Err(SigError::Malformed),
            }
        }
        let (Some(credential), Some(signed_headers), Some(signature)) =
            (credential, signed_headers, signature)
        else {
            return Err(SigError::Malformed);
        };
        let signature = hex_decode(signature).ok_or(SigError::Malformed)?;

        // Credential=AKID/yyyymmdd/region/service/aws4_request
        let scope: Vec<&str> = credential.split('/').collect();
        let [akid, date, region, service, terminator] = scope[..] else {
            return Err(SigError::Malformed);
        };
        let key = self.keys.get(akid).ok_or(SigError::UnknownKey)?;
        if service != SERVICE || region != self.region || terminator != "aws4_request" {
            return Err(SigError::Scope);
        }
        let amz_date = headers.get("x-amz-date").ok_or(SigError::Malformed)?;
        let at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| SigError::Malformed)?
            .and_utc()
            .timestamp_millis();
        if !amz_date.starts_with(date) || date.len() != 8 {
            return Err(SigError::Scope);
        }
        if (now - at).abs() > MAX_SKEW_MS {
            return Err(SigError::Stale);
        }

        let names: Vec<&str> = signed_headers.split(';').collect();
        if !names.contains(&"host")
            || !names.contains(&"x-amz-date")
            || names.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(SigError::Malformed);
        }
        let payload_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
        if let Some(claimed) = headers.get("x-amz-content-sha256")
            && claimed != payload_hash
        {
            return Err(SigError::Mismatch);
        }
        let mut canonical = format!("POST\n{}\n\n", canonical_uri(path));
        for name in &names {
            // A header sent twice is signed as its values joined by commas, as AWS does.
            let values: Vec<String> = headers.get_all(name).map(canonical_value).collect();
            if values.is_empty() {
                return Err(SigError::Malformed);
            }
            let _ = writeln!(canonical, "{name}:{}", values.join(","));
        }
        let _ = write!(canonical, "\n{signed_headers}\n{payload_hash}");

        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let signing_key = [date, region, service, "aws4_request"].iter().fold(
            hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{}", key.secret).as_bytes()),
            |k, part| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&k, part.as_bytes()).as_ref()),
        );
        hmac::verify(&signing_key, string_to_sign.as_bytes(), &signature)
            .map_err(|_| SigError::Mismatch)?;
        Ok(key.principal.clone())
    }
}

/// The path, each byte outside RFC 3986's unreserved set percent-encoded, twice (what AWS
/// signers do for every service but S3).
fn canonical_uri(path: &str) -> String {
    let once = uri_encode(if path.is_empty() { "/" } else { path });
    uri_encode(&once)
}

fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Trimmed, inner runs of spaces collapsed to one.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example key and a request signed by hand with it (the same steps as
    /// the signer, checked against `aws-sigv4` in `tests/auth.rs`).
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn verifier() -> SigV4 {
        SigV4::parse(&format!("worker:{AKID}:{SECRET}"), "us-east-1").unwrap()
    }

    fn sign(date: &str, body: &[u8], secret: &str) -> Headers {
        let headers = Headers::from_pairs([
            ("host", "example.com"),
            ("x-amz-date", date),
            ("content-type", "application/json"),
        ]);
        let payload = hex(digest::digest(&digest::SHA256, body).as_ref());
        let canonical = format!(
            "POST\n/graphql\n\ncontent-type:application/json\nhost:example.com\nx-amz-date:{date}\n\ncontent-type;host;x-amz-date\n{payload}"
        );
        let day = &date[..8];
        let sts = format!(
            "{ALGORITHM}\n{date}\n{day}/us-east-1/appsync/aws4_request\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes());
        for part in [day, "us-east-1", "appsync", "aws4_request"] {
            key = hmac::Key::new(
                hmac::HMAC_SHA256,
                hmac::sign(&key, part.as_bytes()).as_ref(),
            );
        }
        let sig = hex(hmac::sign(&key, sts.as_bytes()).as_ref());
        let mut headers = headers;
        headers.push(
            "authorization",
            format!(
                "{ALGORITHM} Credential={AKID}/{day}/us-east-1/appsync/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}"
            ),
        );
        headers
    }

    fn at(date: &str) -> Millis {
        NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    #[test]
    fn a_good_signature_passes_and_every_change_fails() {
        let v = verifier();
        let date = "20261122T120000Z";
        let body = br#"{"query":"{ a }"}"#;
        let headers = sign(date, body, SECRET);
        let who = v.verify(&headers, "/graphql", body, at(date)).unwrap();
        assert_eq!(who.id, "iam:worker");
        assert_eq!(
            v.verify(&headers, "/graphql", b"{}", at(date)),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            v.verify(&headers, "/graphql/connect", body, at(date)),
            Err(SigError::Mismatch)
        );
        let forged = sign(date, body, "not-the-secret");
        assert_eq!(
            v.verify(&forged, "/graphql", body, at(date)),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            v.verify(&headers, "/graphql", body, at(date) + MAX_SKEW_MS + 1),
            Err(SigError::Stale)
        );
        assert_eq!(
            v.verify(&headers, "/graphql", body, at(date) - MAX_SKEW_MS - 1),
            Err(SigError::Stale)
        );
        let other_region = SigV4::parse(&format!("w:{AKID}:{SECRET}"), "eu-west-1").unwrap();
        assert_eq!(
            other_region.verify(&headers, "/graphql", body, at(date)),
            Err(SigError::Scope)
        );
        let mut doubled = headers.clone();
        doubled.push("content-type", "text/plain");
        assert_eq!(
            v.verify(&doubled, "/graphql", body, at(date)),
            Err(SigError::Mismatch),
            "a second value of a signed header changes what was signed"
        );
        let mut tampered = headers.clone();
        tampered.set("host", "evil.example.com");
        assert_eq!(
            v.verify(&tampered, "/graphql", body, at(date)),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v = verifier();
        for auth in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/appsync/aws4_request",
            "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host;x-amz-date, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/appsync/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz",
            "Bearer abc",
        ] {
            let headers = Headers::from_pairs([
                ("host", "example.com"),
                ("x-amz-date", "20261122T120000Z"),
                ("authorization", auth),
            ]);
            assert!(
                v.verify(&headers, "/graphql", b"", at("20261122T120000Z"))
                    .is_err(),
                "{auth}"
            );
        }
        assert!(SigV4::parse("justakey", "us-east-1").is_err());
        assert!(SigV4::parse("", "us-east-1").is_err());
    }
}
