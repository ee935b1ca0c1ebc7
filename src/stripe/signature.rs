//! Stripe webhook signatures, checked on the raw body before anything
//! parses it.
//!
//! The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`
//! (plus `v0=` test-mode signatures, which are ignored). Each `v1` is the
//! hex HMAC-SHA256, keyed with the endpoint's signing secret (the whole
//! `whsec_…` text as bytes), of the exact bytes `"{t}.{body}"`. A delivery
//! is authentic when any `v1` matches any configured secret (during a
//! secret rotation Stripe signs with both), compared in constant time; it
//! is then refused if `t` is further from the clock than the tolerance,
//! either way.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header Stripe signs deliveries with.
pub const HEADER: &str = "stripe-signature";

/// Why a delivery's signature was refused. Each message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error(
        "the Stripe-Signature header is missing: only requests signed by Stripe are accepted \
         (point a Stripe webhook endpoint or `stripe listen --forward-to` at this URL)"
    )]
    MissingHeader,
    /// The header is not `t=…,v1=…`.
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(String),
    /// The header has no `v1` signature (only `v0`, or none).
    #[error(
        "the Stripe-Signature header has no v1 signature (a header with only v0 is a test-mode \
         legacy signature, which is not accepted)"
    )]
    NoV1Signature,
    /// The signature's timestamp is too far from the clock.
    #[error(
        "the signature's timestamp {timestamp} is {distance} s from this server's clock \
         ({now}), beyond the tolerance of {tolerance} s \
         ([stripe] webhook_tolerance_secs): a replayed delivery, or a clock out of sync"
    )]
    OutsideTolerance {
        /// The header's `t`.
        timestamp: i64,
        /// The clock, in Unix seconds.
        now: i64,
        /// How far apart they are, in seconds.
        distance: u64,
        /// The tolerance, in seconds.
        tolerance: u64,
    },
    /// No `v1` signature matches any configured secret.
    #[error(
        "no v1 signature matches the body with any configured secret: the body was changed \
         in transit, or [stripe] webhook_secrets does not hold this endpoint's signing \
         secret (whsec_…)"
    )]
    NoMatch,
}

/// The parts of a `Stripe-Signature` header.
#[derive(Debug, PartialEq, Eq)]
struct Header<'a> {
    timestamp: i64,
    /// The `v1` signatures, as written.
    v1: Vec<&'a str>,
}

fn parse(header: &str) -> Result<Header<'_>, SignatureError> {
    let malformed = |what: String| SignatureError::Malformed(what);
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(malformed(format!(
                "{:?} is not a key=value pair (expected t=<timestamp>,v1=<signature>)",
                cut(item)
            )));
        };
        match key.trim() {
            "t" => {
                let t: i64 = value.trim().parse().map_err(|_| {
                    malformed(format!(
                        "the timestamp t={:?} is not a whole number of seconds",
                        cut(value)
                    ))
                })?;
                if timestamp.replace(t).is_some_and(|first| first != t) {
                    return Err(malformed("it has two different timestamps (t=)".into()));
                }
            }
            "v1" => v1.push(value.trim()),
            // v0 (legacy test-mode) and any scheme Stripe adds later.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| {
        malformed("it has no timestamp (t=); expected t=<timestamp>,v1=<signature>".into())
    })?;
    Ok(Header { timestamp, v1 })
}

/// The start of a piece of a header, for messages.
fn cut(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Decodes a lower- or upper-case hex signature of SHA-256's size.
fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Verifies a delivery: `header` is the `Stripe-Signature` value, `body`
/// the raw request body, `secrets` the endpoint's signing secrets,
/// `tolerance` how far the signature's timestamp may be from `now_unix`
/// (Unix seconds) either way. Returns the signature's timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    tolerance: Duration,
    now_unix: i64,
) -> Result<i64, SignatureError> {
    let header = match header.map(str::trim) {
        None => return Err(SignatureError::MissingHeader),
        Some("") => return Err(SignatureError::Malformed("it is empty".into())),
        Some(header) => parse(header)?,
    };
    if header.v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    let candidates: Vec<[u8; 32]> = header.v1.iter().filter_map(|s| decode_hex(s)).collect();
    let prefix = format!("{}.", header.timestamp);
    let mut matched = false;
    for secret in secrets {
        // HMAC takes a key of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(prefix.as_bytes());
        mac.update(body);
        for candidate in &candidates {
            // Constant-time comparison of the whole tag.
            matched |= mac.clone().verify_slice(candidate).is_ok();
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let distance = now_unix.abs_diff(header.timestamp);
    if distance > tolerance.as_secs() {
        return Err(SignatureError::OutsideTolerance {
            timestamp: header.timestamp,
            now: now_unix,
            distance,
            tolerance: tolerance.as_secs(),
        });
    }
    Ok(header.timestamp)
}

/// The `Stripe-Signature` header for `body` at `timestamp` with `secret`
/// (one `v1`): what Stripe sends. For tests and tools; the tests of the
/// endpoint also check it against Stripe's own library.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut out = format!("t={timestamp},v1=");
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        for byte in mac.finalize().into_bytes() {
            out.push_str(&format!("{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"ping","created":1767225600}"#;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn check(header: Option<&str>, body: &[u8], keys: &[&str]) -> Result<i64, SignatureError> {
        verify(header, body, &secrets(keys), TOLERANCE, NOW)
    }

    /// A vector made by Stripe's own Python library (`stripe` 16.1.0:
    /// `stripe.WebhookSignature.generate_signature_header(BODY,
    /// "whsec_test", timestamp=1767225600)`).
    const VECTOR: &str =
        "t=1767225600,v1=59366472e2a65fa7f993cd9583dd81f3b427a14b10b4f4c780651946546310d8";

    #[test]
    fn a_vector_from_stripes_library_is_accepted() {
        assert_eq!(check(Some(VECTOR), BODY, &["whsec_test"]), Ok(NOW));
        assert_eq!(sign(BODY, "whsec_test", NOW), VECTOR);
        assert_eq!(
            check(Some(VECTOR), BODY, &["whsec_tesT"]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_valid_signature_is_accepted() {
        let header = sign(BODY, "whsec_test", NOW);
        assert_eq!(check(Some(&header), BODY, &["whsec_test"]), Ok(NOW));
        // Upper-case hex and spaces around the items are fine too.
        let upper = header
            .to_uppercase()
            .replacen("T=", "t=", 1)
            .replacen(",V1=", " , v1= ", 1);
        assert_eq!(check(Some(&upper), BODY, &["whsec_test"]), Ok(NOW));
        // A v0 and unknown schemes are ignored.
        let with_v0 = format!("{header},v0=deadbeef,v9=x");
        assert_eq!(check(Some(&with_v0), BODY, &["whsec_test"]), Ok(NOW));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let header = sign(BODY, "whsec_test", NOW);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            check(Some(&header), &tampered, &["whsec_test"]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let header = sign(BODY, "whsec_other", NOW);
        assert_eq!(
            check(Some(&header), BODY, &["whsec_test"]),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check(Some(&header), BODY, &[]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_is_refused_either_way() {
        for t in [NOW - 301, NOW + 301] {
            let header = sign(BODY, "whsec_test", t);
            match check(Some(&header), BODY, &["whsec_test"]) {
                Err(SignatureError::OutsideTolerance { distance, .. }) => {
                    assert_eq!(distance, 301)
                }
                other => panic!("{other:?}"),
            }
        }
        for t in [NOW - 300, NOW + 300] {
            let header = sign(BODY, "whsec_test", t);
            assert_eq!(check(Some(&header), BODY, &["whsec_test"]), Ok(t));
        }
        // The timestamp is signed: changing it breaks the signature.
        let header = sign(BODY, "whsec_test", NOW - 1000).replace("t=1767224600", "t=1767225600");
        assert_eq!(
            check(Some(&header), BODY, &["whsec_test"]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_missing_header_is_refused() {
        assert_eq!(
            check(None, BODY, &["whsec_test"]),
            Err(SignatureError::MissingHeader)
        );
    }

    #[test]
    fn a_header_with_only_v0_is_refused() {
        let header = sign(BODY, "whsec_test", NOW).replace("v1=", "v0=");
        assert_eq!(
            check(Some(&header), BODY, &["whsec_test"]),
            Err(SignatureError::NoV1Signature)
        );
        assert_eq!(
            check(Some("t=1767225600"), BODY, &["whsec_test"]),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            "",
            "garbage",
            "v1=abc",
            "t=soon,v1=abc",
            "t=1,t=2,v1=abc",
            "t=99999999999999999999,v1=abc",
        ] {
            assert!(
                matches!(
                    check(Some(header), BODY, &["whsec_test"]),
                    Err(SignatureError::Malformed(_))
                ),
                "{header:?}"
            );
        }
        // Signatures that are not hex of the right size never match.
        assert_eq!(
            check(Some("t=1767225600,v1=zz"), BODY, &["whsec_test"]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn any_secret_and_any_v1_may_match_during_rotation() {
        let old = sign(BODY, "whsec_old", NOW);
        let new = sign(BODY, "whsec_new", NOW);
        let both = format!(
            "{},{}",
            old,
            new.split_once(',').map(|(_, v1)| v1).unwrap_or("")
        );
        // The second secret signs.
        assert_eq!(
            check(Some(&new), BODY, &["whsec_old", "whsec_new"]),
            Ok(NOW)
        );
        // Two v1 signatures, the second one matches.
        assert_eq!(check(Some(&both), BODY, &["whsec_new"]), Ok(NOW));
        assert_eq!(
            check(Some(&both), BODY, &["whsec_neither"]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn messages_say_what_to_check() {
        let text = SignatureError::NoMatch.to_string();
        assert!(text.contains("webhook_secrets"), "{text}");
        let text = SignatureError::MissingHeader.to_string();
        assert!(text.contains("Stripe-Signature"), "{text}");
    }
}
