//! Payment links: `{public_url}/pay/<token>`, put in refusals.
//!
//! A refusal must carry a working checkout URL, but it must not call
//! Stripe: refusals are on the hot path, can come in floods (an agent
//! retrying a call it cannot pay for), and most are never opened. So the
//! link is a signed token, made without any I/O, naming the customer, what
//! they are offered and when the link expires; the Checkout Session is
//! created only when the link is opened (`GET /pay/<token>` answers with a
//! redirect to it). Opening the same link again within Stripe's idempotency
//! window (a day) leads to the same session.
//!
//! The token is `base64url(customer "\n" item "\n" expiry)` `.`
//! `base64url(HMAC-SHA256(key, that payload))`; the key is
//! `[stripe] pay_link_secret`, or else derived from the API secret key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::config::{CheckoutItem, StripeConfig};

/// Why a payment link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayLinkError {
    /// Not a token this proxy made (or altered).
    #[error("this payment link is not valid; ask for a new one")]
    Invalid,
    /// Past its expiry.
    #[error("this payment link has expired; make the call again to get a new one")]
    Expired,
}

/// What a payment link opens a checkout for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayLink {
    /// mcp-meter's customer id.
    pub customer: String,
    /// What they are offered.
    pub item: CheckoutItem,
    /// When the link stops working, Unix seconds.
    pub expires_at: i64,
}

/// Makes and checks payment links.
#[derive(Clone)]
pub struct PayLinks {
    key: Vec<u8>,
    base: String,
    ttl_secs: i64,
}

impl std::fmt::Debug for PayLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayLinks")
            .field("base", &self.base)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl PayLinks {
    /// Links for `[stripe]`; `None` without `public_url` or a key to sign
    /// with.
    pub fn new(config: &StripeConfig) -> Option<Self> {
        let base = config
            .public_url
            .as_deref()?
            .trim_end_matches('/')
            .to_owned();
        let key = match (&config.pay_link_secret, &config.secret_key) {
            (Some(secret), _) => secret.as_bytes().to_vec(),
            (None, Some(api_key)) => {
                let mut mac = HmacSha256::new_from_slice(api_key.as_bytes()).ok()?;
                mac.update(b"mcp-meter payment links v1");
                mac.finalize().into_bytes().to_vec()
            }
            (None, None) => return None,
        };
        Some(Self {
            key,
            base,
            ttl_secs: i64::try_from(config.pay_link_ttl_secs).unwrap_or(i64::MAX),
        })
    }

    fn mac(&self, payload: &[u8]) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(payload);
        Some(mac)
    }

    /// The link for `customer` to buy `item`, valid from `now_secs` for the
    /// configured lifetime.
    pub fn link(&self, customer: &str, item: &CheckoutItem, now_secs: i64) -> Option<String> {
        let expires = now_secs.saturating_add(self.ttl_secs);
        let payload = format!("{customer}\n{item}\n{expires}");
        let tag = self.mac(payload.as_bytes())?.finalize().into_bytes();
        Some(format!(
            "{}/pay/{}.{}",
            self.base,
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// Checks `token` at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<PayLink, PayLinkError> {
        let (payload, tag) = token.split_once('.').ok_or(PayLinkError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| PayLinkError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| PayLinkError::Invalid)?;
        self.mac(&payload)
            .ok_or(PayLinkError::Invalid)?
            .verify_slice(&tag)
            .map_err(|_| PayLinkError::Invalid)?;
        let text = String::from_utf8(payload).map_err(|_| PayLinkError::Invalid)?;
        let mut parts = text.split('\n');
        let (Some(customer), Some(item), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PayLinkError::Invalid);
        };
        let item = CheckoutItem::parse(item).ok_or(PayLinkError::Invalid)?;
        let expires_at: i64 = expires.parse().map_err(|_| PayLinkError::Invalid)?;
        if now_secs >= expires_at {
            return Err(PayLinkError::Expired);
        }
        Ok(PayLink {
            customer: customer.to_owned(),
            item,
            expires_at,
        })
    }
}

/// A digest of `text` (a link's token) for an idempotency key: a hash, so
/// the key stays short and reveals nothing.
pub fn token_digest(text: &str) -> String {
    use sha2::Digest as _;
    let digest = Sha256::digest(text.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(secret: &str) -> PayLinks {
        let config: StripeConfig = toml::from_str(&format!(
            "webhook_secrets = [\"whsec_a\"]\nsecret_key = \"{secret}\"\n\
             public_url = \"https://tools.example.com/\"\n"
        ))
        .expect("parses");
        PayLinks::new(&config).expect("configured")
    }

    fn token(link: &str) -> &str {
        link.rsplit_once("/pay/").expect("a pay link").1
    }

    #[test]
    fn a_link_round_trips_until_it_expires() {
        let links = links("sk_test_1");
        let item = CheckoutItem::Pack("pack-1000".into());
        let link = links.link("cus_a", &item, 1_000).expect("signed");
        assert!(link.starts_with("https://tools.example.com/pay/"), "{link}");
        let opened = links.verify(token(&link), 1_000).expect("valid");
        assert_eq!(opened.customer, "cus_a");
        assert_eq!(opened.item, item);
        assert_eq!(opened.expires_at, 1_000 + 86_400);
        assert_eq!(
            links.verify(token(&link), 1_000 + 86_400),
            Err(PayLinkError::Expired)
        );
    }

    #[test]
    fn altered_or_foreign_links_are_refused() {
        let links = links("sk_test_1");
        let link = links
            .link("cus_a", &CheckoutItem::Plan("team".into()), 0)
            .expect("signed");
        let token = token(&link);
        let (payload, tag) = token.split_once('.').expect("two parts");
        let forged_payload = URL_SAFE_NO_PAD.encode("cus_b\nplan:team\n99999999999");
        for bad in [
            format!("{forged_payload}.{tag}"),
            format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            payload.to_owned(),
            "not a token".to_owned(),
            String::new(),
        ] {
            assert_eq!(links.verify(&bad, 0), Err(PayLinkError::Invalid), "{bad}");
        }
        // Another API key (a rotated one) signs differently.
        assert_eq!(
            super::tests::links("sk_test_2").verify(token, 0),
            Err(PayLinkError::Invalid)
        );
    }
}
