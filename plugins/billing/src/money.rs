//! Exact prices: decimal text from the configuration to integer amounts and
//! back. A currency amount is a count of micro-units (millionths of the
//! currency unit); a credit amount is a count of whole credits. Never
//! floating point: `"0.0005"` is 500 micro-units, exactly.

use std::fmt;

use serde::Deserialize;

/// Digits after the decimal point a currency price may have.
pub const CURRENCY_DECIMALS: u32 = 6;
/// Micro-units per currency unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// What a plan's amounts count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Whole prepaid credits.
    Credits,
    /// Micro-units of a currency (ISO 4217 code, lower case).
    Currency(String),
    /// Calls counted, not priced (free and metered plans without a
    /// currency).
    Calls,
}

impl Unit {
    /// `credits` or the currency code, as stored in the ledger.
    pub fn as_str(&self) -> &str {
        match self {
            Unit::Credits => "credits",
            Unit::Currency(code) => code,
            Unit::Calls => "calls",
        }
    }

    /// Formats an amount of this unit for people and for `_meta`:
    /// credits as an integer, currency as a decimal without trailing zeros
    /// (`0.0005`, `12.5`, `3`).
    pub fn format(&self, amount: i64) -> String {
        match self {
            Unit::Credits | Unit::Calls => amount.to_string(),
            Unit::Currency(_) => format_micros(amount),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A price as written in TOML: a decimal string (`"0.0005"`) or an integer
/// (whole credits, or whole currency units). A TOML float is refused: it
/// cannot be read exactly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PriceText {
    /// An integer.
    Whole(i64),
    /// A decimal string.
    Decimal(String),
}

/// Why a price cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// Not a decimal number.
    #[error("`{0}` is not a decimal number; write a price like \"0.0005\"")]
    NotANumber(String),
    /// Below zero.
    #[error("`{0}` is negative; prices are zero or more")]
    Negative(String),
    /// More decimals than the unit allows.
    #[error("`{text}` has more than {allowed} digits after the decimal point")]
    TooPrecise {
        /// The text.
        text: String,
        /// Digits allowed.
        allowed: u32,
    },
    /// Too large to count.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl PriceText {
    /// The amount in `unit`'s smallest count: micro-units of a currency, or
    /// whole credits (a credit price may not have decimals).
    pub fn to_amount(&self, unit: &Unit) -> Result<i64, PriceError> {
        let decimals = match unit {
            Unit::Credits | Unit::Calls => 0,
            Unit::Currency(_) => CURRENCY_DECIMALS,
        };
        match self {
            PriceText::Whole(n) if *n < 0 => Err(PriceError::Negative(n.to_string())),
            PriceText::Whole(n) => n
                .checked_mul(10i64.pow(decimals))
                .ok_or_else(|| PriceError::TooLarge(n.to_string())),
            PriceText::Decimal(text) => parse_decimal(text, decimals),
        }
    }
}

/// Parses `text` (digits, an optional `.` and up to `decimals` digits after
/// it) into an integer scaled by `10^decimals`.
pub fn parse_decimal(text: &str, decimals: u32) -> Result<i64, PriceError> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(PriceError::Negative(text.to_owned()));
    }
    let (whole, fraction) = match trimmed.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (trimmed, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || (trimmed.contains('.') && fraction.is_empty())
    {
        return Err(PriceError::NotANumber(text.to_owned()));
    }
    let significant = fraction.trim_end_matches('0');
    if significant.len() > decimals as usize {
        return Err(PriceError::TooPrecise {
            text: text.to_owned(),
            allowed: decimals,
        });
    }
    let too_large = || PriceError::TooLarge(text.to_owned());
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut scaled_fraction: i64 = 0;
    for position in 0..decimals as usize {
        let digit = significant
            .as_bytes()
            .get(position)
            .map_or(0, |b| i64::from(b - b'0'));
        scaled_fraction = scaled_fraction * 10 + digit;
    }
    whole
        .checked_mul(10i64.pow(decimals))
        .and_then(|w| w.checked_add(scaled_fraction))
        .ok_or_else(too_large)
}

/// Micro-units as a decimal of the currency unit, without trailing zeros.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let per = MICROS_PER_UNIT.unsigned_abs();
    let whole = abs / per;
    let fraction = abs % per;
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let fraction = format!("{fraction:06}");
    format!("{sign}{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Unit {
        Unit::Currency("usd".into())
    }

    #[test]
    fn decimals_parse_exactly() {
        let cases = [
            ("0.0005", 500),
            ("1", 1_000_000),
            ("12.5", 12_500_000),
            (".25", 250_000),
            ("0.000001", 1),
            ("0.100000", 100_000),
            ("0", 0),
            (" 2.50 ", 2_500_000),
        ];
        for (text, micros) in cases {
            assert_eq!(
                PriceText::Decimal(text.into()).to_amount(&usd()),
                Ok(micros),
                "{text}"
            );
        }
        assert_eq!(PriceText::Whole(3).to_amount(&usd()), Ok(3_000_000));
        assert_eq!(PriceText::Whole(3).to_amount(&Unit::Credits), Ok(3));
    }

    #[test]
    fn bad_prices_say_why() {
        let err = |text: &str, unit: &Unit| PriceText::Decimal(text.into()).to_amount(unit);
        assert!(matches!(
            err("0.0000001", &usd()),
            Err(PriceError::TooPrecise { allowed: 6, .. })
        ));
        assert!(matches!(
            err("0.5", &Unit::Credits),
            Err(PriceError::TooPrecise { allowed: 0, .. })
        ));
        assert!(matches!(err("-1", &usd()), Err(PriceError::Negative(_))));
        assert!(matches!(
            PriceText::Whole(-1).to_amount(&usd()),
            Err(PriceError::Negative(_))
        ));
        for text in ["", ".", "1.", "abc", "1e-3", "0x10", "1.2.3", "+1", "1,5"] {
            assert!(
                matches!(err(text, &usd()), Err(PriceError::NotANumber(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            err("99999999999999999999", &usd()),
            Err(PriceError::TooLarge(_))
        ));
        assert!(matches!(
            PriceText::Whole(i64::MAX).to_amount(&usd()),
            Err(PriceError::TooLarge(_))
        ));
    }

    #[test]
    fn micros_format_without_trailing_zeros() {
        assert_eq!(format_micros(500), "0.0005");
        assert_eq!(format_micros(12_500_000), "12.5");
        assert_eq!(format_micros(3_000_000), "3");
        assert_eq!(format_micros(-200_000), "-0.2");
        assert_eq!(format_micros(0), "0");
        assert_eq!(Unit::Credits.format(7), "7");
    }

    #[test]
    fn every_micro_amount_round_trips() {
        for micros in [0, 1, 9, 10, 999_999, 1_000_000, 1_000_001, 123_456_789] {
            assert_eq!(parse_decimal(&format_micros(micros), 6), Ok(micros));
        }
    }
}
