//! Why a token was refused.

/// Why a JWT was refused. Every message is safe to show the client: it
/// names what is wrong with the token, never key material or the expected
/// values. [`JwtError::reason`] gives a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and payload, or a claim
    /// of the wrong type.
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not accepted (including `none`), or does not
    /// suit the key the token names.
    #[error("the token's signing algorithm is not accepted")]
    AlgNotAllowed,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the allowed clock skew).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// A required claim is missing (or, for the subject, not a non-empty
    /// string).
    #[error("the token has no usable `{0}` claim")]
    MissingClaim(String),
    /// The key set has no key with the token's `kid` (or the token has no
    /// `kid` and the set has several keys).
    #[error("the token's signing key is not known")]
    UnknownKid,
    /// The key set could not be fetched and none is cached.
    #[error("the token's signing keys are unavailable, try again later")]
    JwksUnavailable,
}

impl JwtError {
    /// A short, stable, snake_case code for the refusal (`jwt_expired`, …),
    /// for responses, logs and usage records.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::AlgNotAllowed => "jwt_alg_not_allowed",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::WrongIssuer => "jwt_wrong_issuer",
            JwtError::WrongAudience => "jwt_wrong_audience",
            JwtError::MissingClaim(_) => "jwt_missing_claim",
            JwtError::UnknownKid => "jwt_unknown_kid",
            JwtError::JwksUnavailable => "jwks_unavailable",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match err.into_kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => JwtError::AlgNotAllowed,
            ErrorKind::InvalidClaimFormat(_) => {
                JwtError::Malformed("a registered claim has the wrong type")
            }
            // Keys are checked when they are loaded, so a key that cannot
            // verify is treated as a signature that does not verify.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_) => JwtError::BadSignature,
            _ => JwtError::Malformed("cannot decode the token"),
        }
    }
}
