//! The API key format: `mcp_` + 43 base62 characters (256 random bits) + 6
//! base62 characters of CRC-32 checksum, 53 characters in all.
//!
//! The checksum lets the proxy reject a mistyped or truncated key without
//! touching the database, and the fixed prefix and shape let secret scanners
//! recognise a leaked key (`mcp_[0-9A-Za-z]{49}`). Keys are stored only as the
//! SHA-256 of the whole key text ([`ApiKey::hash`]); the secret is shown once
//! at creation and never kept.
//!
//! ```
//! use mcp_meter_auth::key::ApiKey;
//!
//! let key = ApiKey::generate();
//! let text = key.expose().to_owned();
//! assert!(text.starts_with("mcp_") && text.len() == 53);
//! let parsed = ApiKey::parse(&text).unwrap();
//! assert_eq!(parsed.hash(), key.hash());
//! // One changed character fails the checksum.
//! let mut typo = text.into_bytes();
//! typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
//! assert!(ApiKey::parse(std::str::from_utf8(&typo).unwrap()).is_err());
//! ```

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The text every key starts with.
pub const KEY_PREFIX: &str = "mcp_";
/// Characters of the random part (256 bits in base62).
const BODY_LEN: usize = 43;
/// Characters of the checksum (a CRC-32 in base62).
const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
/// How many characters of a key are kept in clear for listings
/// (`mcp_` + 8).
pub const VISIBLE_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a text is not a well-formed API key. The messages say what is wrong
/// with the text, never anything about stored keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// It does not start with `mcp_`.
    #[error("an mcp-meter API key starts with \"mcp_\"")]
    WrongPrefix,
    /// It is too short or too long.
    #[error("an mcp-meter API key is {KEY_LEN} characters long, this one has {0}")]
    WrongLength(usize),
    /// It has a character outside 0-9, A-Z, a-z after the prefix.
    #[error("an mcp-meter API key has only letters and digits after \"mcp_\"")]
    BadCharacter,
    /// The checksum does not match: a typo or a truncated copy.
    #[error("the API key's checksum does not match: it was mistyped or cut off")]
    BadChecksum,
}

/// A whole API key, secret included. Its `Debug` shows only the visible
/// prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    text: String,
}

impl ApiKey {
    /// A new key from 256 bits of a cryptographically secure generator
    /// seeded by the operating system (`rand::rng()`).
    pub fn generate() -> Self {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        Self::from_random(random)
    }

    /// The key for given random bytes (tests and [`ApiKey::generate`]).
    fn from_random(random: [u8; 32]) -> Self {
        let mut text = String::with_capacity(KEY_LEN);
        text.push_str(KEY_PREFIX);
        text.push_str(&base62_fixed(&random, BODY_LEN));
        let checksum = crc32fast::hash(text.as_bytes());
        text.push_str(&base62_fixed(&checksum.to_be_bytes(), CHECKSUM_LEN));
        Self { text }
    }

    /// Checks the shape and checksum of `text`, without any lookup.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        if !text.starts_with(KEY_PREFIX) {
            return Err(KeyFormatError::WrongPrefix);
        }
        if text.len() != KEY_LEN {
            return Err(KeyFormatError::WrongLength(text.chars().count()));
        }
        let rest = &text.as_bytes()[KEY_PREFIX.len()..];
        if !rest.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyFormatError::BadCharacter);
        }
        let (signed, checksum) = text.split_at(KEY_LEN - CHECKSUM_LEN);
        let expected = base62_fixed(
            &crc32fast::hash(signed.as_bytes()).to_be_bytes(),
            CHECKSUM_LEN,
        );
        if checksum != expected {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The whole key text: show it once, never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The SHA-256 of the key text: what the store keeps and looks up.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }

    /// The first characters, safe to list and log (`mcp_AbCd1234`).
    pub fn visible_prefix(&self) -> &str {
        &self.text[..VISIBLE_PREFIX_LEN]
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.visible_prefix())
    }
}

/// `bytes` read as a big-endian number, written in base62 with exactly
/// `width` digits (leading zeros kept). `width` must be enough for the number.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        *slot = ALPHABET[remainder as usize];
    }
    digits.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base62_is_fixed_width_and_big_endian() {
        assert_eq!(base62_fixed(&[0, 0, 0, 0], 6), "000000");
        assert_eq!(base62_fixed(&[0, 0, 0, 61], 6), "00000z");
        assert_eq!(base62_fixed(&[0, 0, 0, 62], 6), "000010");
        assert_eq!(base62_fixed(&u32::MAX.to_be_bytes(), 6), "4gfFC3");
        assert_eq!(base62_fixed(&[0xff; 32], BODY_LEN).len(), BODY_LEN);
    }

    #[test]
    fn all_zero_and_all_ones_keys_round_trip() {
        for random in [[0u8; 32], [0xff; 32]] {
            let key = ApiKey::from_random(random);
            assert_eq!(ApiKey::parse(key.expose()), Ok(key));
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(key.expose()), "{shown}");
        assert!(shown.contains(key.visible_prefix()));
    }

    #[test]
    fn each_malformation_has_its_error() {
        let key = ApiKey::generate();
        let text = key.expose();
        assert_eq!(
            ApiKey::parse(&text.replacen("mcp_", "mcx_", 1)),
            Err(KeyFormatError::WrongPrefix)
        );
        assert_eq!(
            ApiKey::parse(&text[..KEY_LEN - 1]),
            Err(KeyFormatError::WrongLength(KEY_LEN - 1))
        );
        let mut bad = text.to_owned();
        bad.replace_range(10..11, "-");
        assert_eq!(ApiKey::parse(&bad), Err(KeyFormatError::BadCharacter));
        assert_eq!(ApiKey::parse(""), Err(KeyFormatError::WrongPrefix));
    }

    proptest! {
        #[test]
        fn generated_keys_parse_and_keep_their_hash(random in proptest::array::uniform32(any::<u8>())) {
            let key = ApiKey::from_random(random);
            prop_assert_eq!(key.expose().len(), KEY_LEN);
            prop_assert!(key.expose().starts_with(KEY_PREFIX));
            let parsed = ApiKey::parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.hash(), key.hash());
        }

        #[test]
        fn any_single_substitution_is_caught(
            random in proptest::array::uniform32(any::<u8>()),
            position in KEY_PREFIX.len()..KEY_LEN,
            replacement in 0usize..62,
        ) {
            let key = ApiKey::from_random(random);
            let mut bytes = key.expose().as_bytes().to_vec();
            prop_assume!(bytes[position] != ALPHABET[replacement]);
            bytes[position] = ALPHABET[replacement];
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(ApiKey::parse(&typo), Err(KeyFormatError::BadChecksum));
        }

        #[test]
        fn adjacent_swaps_are_caught(
            random in proptest::array::uniform32(any::<u8>()),
            position in KEY_PREFIX.len()..KEY_LEN - 1,
        ) {
            let key = ApiKey::from_random(random);
            let mut bytes = key.expose().as_bytes().to_vec();
            prop_assume!(bytes[position] != bytes[position + 1]);
            bytes.swap(position, position + 1);
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(ApiKey::parse(&typo), Err(KeyFormatError::BadChecksum));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = ApiKey::parse(&text);
        }

        #[test]
        fn arbitrary_well_shaped_text_is_rejected_by_checksum(body in "[0-9A-Za-z]{49}") {
            let text = format!("mcp_{body}");
            if let Ok(key) = ApiKey::parse(&text) {
                prop_assert_eq!(key.expose(), text.as_str());
            }
        }
    }
}
