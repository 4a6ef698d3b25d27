//! Certificate credentials (reference §2): a client assertion is a JWT signed with the private
//! key of a certificate registered on the app. Entra finds the certificate by the thumbprint in
//! the JWT header (`x5t`: SHA-1, or `x5t#S256`: SHA-256, both base64url of the DER), checks the
//! RSA signature (RS256 or PS256) with its public key, then the claims: `aud` the token URL,
//! `iss` = `sub` = the client id, `jti` present, `nbf` ≤ now < `exp`.
//!
//! The AADSTS numbers are Entra's as we know them: 700027 (key not registered / signature),
//! 700024 (outside its valid time), 700023 (audience), 700021 (issuer or subject), 50027
//! (malformed JWT). Texts not in the reference are marked where they are built.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use serde_json::Value;

/// Entra tolerates this much clock skew on `nbf` and `exp` (GUESS: 5 minutes, the usual value
/// of Microsoft's token validation libraries).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A certificate registered on an app, ready for checking assertions.
#[derive(Clone, Debug)]
pub struct RegisteredCert {
    /// SHA-1 of the DER (what `x5t` carries, and what the portal shows as "thumbprint").
    pub sha1: Vec<u8>,
    /// SHA-256 of the DER (`x5t#S256`).
    pub sha256: Vec<u8>,
    /// The RSAPublicKey DER from the SubjectPublicKeyInfo.
    public_key: Vec<u8>,
}

impl RegisteredCert {
    /// Parses one PEM certificate with an RSA key.
    pub fn from_pem(pem: &str) -> Result<RegisteredCert, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spki = cert.public_key();
        // rsaEncryption; Entra takes RSA keys only for certificate credentials.
        if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return Err("the certificate's key is not RSA".into());
        }
        let der = &block.contents;
        Ok(RegisteredCert {
            sha1: digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref().to_vec(),
            sha256: digest::digest(&digest::SHA256, der).as_ref().to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
        })
    }
}

/// Why an assertion was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssertionError {
    /// Not a JWT, or a claim missing or of the wrong type (AADSTS50027).
    Malformed,
    /// An algorithm other than RS256/PS256 (GUESS: AADSTS5002738).
    Algorithm(String),
    /// No registered certificate has this thumbprint (AADSTS700027); the upper-case hex the
    /// client used.
    UnknownKey(String),
    /// The signature does not verify (AADSTS700027).
    Signature,
    /// Outside `nbf`..`exp` (AADSTS700024): (now, nbf, exp) in seconds since the epoch.
    Time(u64, u64, u64),
    /// `aud` is not the token endpoint (AADSTS700023).
    Audience,
    /// `iss` or `sub` is not the client id (AADSTS700021).
    Issuer,
}

/// Checks `jwt` for `client_id` against `certs`. `audiences` are the token URLs the assertion
/// may name (compared case-insensitively).
pub fn verify(
    jwt: &str,
    client_id: &str,
    certs: &[RegisteredCert],
    audiences: &[String],
    now: SystemTime,
) -> Result<(), AssertionError> {
    let mut parts = jwt.trim().split('.');
    let (Some(h64), Some(c64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AssertionError::Malformed);
    };
    let json = |s: &str| -> Result<Value, AssertionError> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| AssertionError::Malformed)?;
        serde_json::from_slice::<Value>(&bytes).map_err(|_| AssertionError::Malformed)
    };
    let header = json(h64)?;
    let claims = json(c64)?;
    let signature = URL_SAFE_NO_PAD.decode(s64.trim_end_matches('=')).map_err(|_| AssertionError::Malformed)?;

    let alg = header.get("alg").and_then(Value::as_str).ok_or(AssertionError::Malformed)?;
    let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match alg {
        "RS256" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        "PS256" => &ring::signature::RSA_PSS_2048_8192_SHA256,
        other => return Err(AssertionError::Algorithm(other.to_owned())),
    };
    let thumb = |k: &str| header.get(k).and_then(Value::as_str).and_then(|t| URL_SAFE_NO_PAD.decode(t).ok());
    let cert = match (thumb("x5t#S256"), thumb("x5t")) {
        (Some(t), _) => certs.iter().find(|c| c.sha256 == t).ok_or_else(|| AssertionError::UnknownKey(hex(&t)))?,
        (None, Some(t)) => certs.iter().find(|c| c.sha1 == t).ok_or_else(|| AssertionError::UnknownKey(hex(&t)))?,
        (None, None) => return Err(AssertionError::Malformed),
    };
    let signed = &jwt.trim().as_bytes()[..h64.len() + 1 + c64.len()];
    ring::signature::UnparsedPublicKey::new(algorithm, &cert.public_key)
        .verify(signed, &signature)
        .map_err(|_| AssertionError::Signature)?;

    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let number = |k: &str| claims.get(k).and_then(Value::as_u64);
    let (Some(aud), Some(iss), Some(sub), Some(_jti), Some(exp)) =
        (text("aud"), text("iss"), text("sub"), text("jti"), number("exp"))
    else {
        return Err(AssertionError::Malformed);
    };
    if !iss.eq_ignore_ascii_case(client_id) || !sub.eq_ignore_ascii_case(client_id) {
        return Err(AssertionError::Issuer);
    }
    if !audiences.iter().any(|a| a.eq_ignore_ascii_case(aud)) {
        return Err(AssertionError::Audience);
    }
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let nbf = number("nbf").unwrap_or(0);
    let skew = CLOCK_SKEW.as_secs();
    if now_s + skew < nbf || now_s >= exp + skew {
        return Err(AssertionError::Time(now_s, nbf, exp));
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_inputs() {
        let none: [RegisteredCert; 0] = [];
        for jwt in ["", "a.b", "a.b.c.d", "!!.??.x"] {
            assert_eq!(verify(jwt, "id", &none, &[], UNIX_EPOCH), Err(AssertionError::Malformed), "{jwt}");
        }
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","x5t":"AAAA"}"#);
        let c = URL_SAFE_NO_PAD.encode(b"{}");
        assert_eq!(
            verify(&format!("{h}.{c}.AAAA"), "id", &none, &[], UNIX_EPOCH),
            Err(AssertionError::Algorithm("ES256".into()))
        );
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","x5t":"AAAA"}"#);
        assert_eq!(
            verify(&format!("{h}.{c}.AAAA"), "id", &none, &[], UNIX_EPOCH),
            Err(AssertionError::UnknownKey("000000".into()))
        );
    }
}
