//! Verification keys: an HMAC secret, a PEM public key, or a JWK; each
//! checked when it is loaded, so a key in use can always verify.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};

use super::Algorithm;

/// The shortest HMAC secret accepted, in bytes.
pub(crate) const MIN_SECRET_LEN: usize = 32;
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus the verifier supports, in bits.
const MAX_RSA_BITS: usize = 4096;

/// Every asymmetric algorithm: the default for a key set.
pub(crate) const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a key is, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// The algorithms a key of this kind verifies.
    pub(crate) fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyKind::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            KeyKind::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyKind::EcP256 => &[Algorithm::ES256],
            KeyKind::EcP384 => &[Algorithm::ES384],
            KeyKind::Ed25519 => &[Algorithm::EdDSA],
        }
    }

    /// Whether a key of this kind verifies `alg`.
    pub(crate) fn supports(self, alg: Algorithm) -> bool {
        self.algorithms().contains(&alg)
    }

    /// The kind in words, for configuration errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// A key that can verify tokens of its kind's algorithms.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kind: KeyKind,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// An HMAC secret of at least [`MIN_SECRET_LEN`] bytes.
pub(crate) fn from_secret(secret: &str) -> Result<VerifyingKey, String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret is {} bytes long; an HMAC secret needs at least {MIN_SECRET_LEN}",
            secret.len()
        ));
    }
    Ok(VerifyingKey {
        kind: KeyKind::Hmac,
        key: DecodingKey::from_secret(secret.as_bytes()),
    })
}

/// Reads one public key from a PEM file.
pub(crate) fn load_pem(path: &Path) -> Result<VerifyingKey, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads one public key from PEM text: `PUBLIC KEY` (RSA, EC P-256/P-384,
/// Ed25519) or `RSA PUBLIC KEY`.
pub(crate) fn from_pem(pem: &[u8]) -> Result<VerifyingKey, String> {
    let label = pem_label(pem).ok_or("no PEM block found (expected BEGIN PUBLIC KEY)")?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        label if label.contains("PRIVATE KEY") => {
            return Err(format!(
                "holds a private key ({label}); give the public key instead \
                 (openssl pkey -in key.pem -pubout)"
            ));
        }
        "CERTIFICATE" => {
            return Err("holds a certificate; give its public key instead \
                 (openssl x509 -in cert.pem -pubkey -noout)"
                .to_owned());
        }
        other => return Err(format!("holds a {other}, not a public key")),
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let der = key
            .try_get_as_bytes()
            .map_err(|_| "not a valid RSA public key")?;
        let (n, e) = (DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key)(der)
        .map_err(|_| "not a valid RSA public key")?;
        return rsa_from_components(&n, &e);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let point_len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        let kind = match point_len {
            65 | 33 => KeyKind::EcP256,
            97 | 49 => KeyKind::EcP384,
            _ => return Err("an EC key on an unsupported curve (use P-256 or P-384)".to_owned()),
        };
        return checked(kind, key)
            .map_err(|_| "an EC key on an unsupported curve (use P-256 or P-384)".to_owned());
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return ed25519(key);
    }
    Err("not an RSA, EC (P-256, P-384) or Ed25519 public key".to_owned())
}

/// The label of the first PEM block (`PUBLIC KEY`, `RSA PRIVATE KEY`, …).
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(rest[..end].trim())
}

/// A key from one JWK of a key set, with the algorithm the JWK pins (its
/// `alg`), if any. Refuses symmetric keys, keys not meant for signatures,
/// and keys that cannot verify.
pub(crate) fn from_jwk(jwk: &Jwk) -> Result<(VerifyingKey, Option<Algorithm>), String> {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};

    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (`use`)".to_owned()),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.iter().any(|op| matches!(op, KeyOperations::Verify))
    {
        return Err("not a verification key (`key_ops`)".to_owned());
    }
    let pinned = match &jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            alg.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("unsupported `alg` {alg}"))?,
        ),
    };
    let key = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = b64(&params.n)?;
            let e = b64(&params.e)?;
            rsa_from_components(&n, &e)?
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let (kind, len) = match params.curve {
                EllipticCurve::P256 => (KeyKind::EcP256, 32),
                EllipticCurve::P384 => (KeyKind::EcP384, 48),
                _ => return Err("unsupported EC curve".to_owned()),
            };
            if b64(&params.x)?.len() != len || b64(&params.y)?.len() != len {
                return Err("EC coordinates of the wrong length".to_owned());
            }
            let key = DecodingKey::from_ec_components(&params.x, &params.y)
                .map_err(|_| "invalid EC key")?;
            checked(kind, key)?
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve".to_owned());
            }
            let key =
                DecodingKey::from_ed_components(&params.x).map_err(|_| "invalid Ed25519 key")?;
            ed25519(key)?
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not accepted from a key set".to_owned());
        }
        _ => return Err("unsupported key type".to_owned()),
    };
    if let Some(alg) = pinned
        && !key.kind.supports(alg)
    {
        return Err(format!(
            "`alg` {alg:?} does not suit {}",
            key.kind.describe()
        ));
    }
    Ok((key, pinned))
}

fn b64(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| "a key parameter is not base64url".to_owned())
}

/// An RSA key from its big-endian modulus and exponent, checked for size.
fn rsa_from_components(n: &[u8], e: &[u8]) -> Result<VerifyingKey, String> {
    let bits = bit_length(n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; at most {MAX_RSA_BITS} are supported"
        ));
    }
    let e_value = e.iter().skip_while(|b| **b == 0).try_fold(0u64, |acc, b| {
        acc.checked_mul(256).map(|v| v | u64::from(*b))
    });
    match e_value {
        Some(e) if e >= 3 && e % 2 == 1 && e < (1 << 33) => {}
        _ => return Err("an RSA key with an invalid public exponent".to_owned()),
    }
    Ok(VerifyingKey {
        kind: KeyKind::Rsa,
        key: DecodingKey::from_rsa_raw_components(n, e),
    })
}

fn bit_length(bytes: &[u8]) -> usize {
    let mut rest = bytes.iter().skip_while(|b| **b == 0);
    match rest.next() {
        None => 0,
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * rest.count(),
    }
}

/// An Ed25519 key: exactly 32 bytes, a valid curve point.
fn ed25519(key: DecodingKey) -> Result<VerifyingKey, String> {
    // The verifier slices the first 32 bytes, so the length is checked first.
    if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
        return Err("an Ed25519 key must be 32 bytes".to_owned());
    }
    checked(KeyKind::Ed25519, key).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// `key` as a `kind` key, if a verifier can be built from it.
fn checked(kind: KeyKind, key: DecodingKey) -> Result<VerifyingKey, String> {
    let alg = kind.algorithms()[0];
    (DEFAULT_PROVIDER.verifier_factory)(&alg, &key)
        .map_err(|_| format!("not a valid public key for {alg:?}"))?;
    Ok(VerifyingKey { kind, key })
}
