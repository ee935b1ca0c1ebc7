//! Request parts the API reads, refused in the API's error shape: query
//! strings and JSON bodies (unknown fields refused, the body size limited),
//! RFC 3339 times, and cursor pagination.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use mcp_meter_plugin::identity::UnixMillis;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The most items one page holds.
pub const MAX_LIMIT: u32 = 1_000;

/// The items of a page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;

/// A query string parsed into `T` (unknown parameters refused when `T`
/// denies them).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_like(query).map(ApiQuery)
    }
}

/// Parses a query string into `T` through axum's own query extractor
/// rules (serde over `application/x-www-form-urlencoded`).
fn serde_urlencoded_like<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::invalid("the query string is not valid"))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::invalid(format!("bad query parameters: {}", e.body_text())))
}

/// A JSON body parsed into `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(_) => ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the body is larger than this API accepts ([api] max_body_bytes)",
                    ),
                    other => ApiError::invalid(other.body_text()),
                })?;
        // Every body is an object: serde would also read a struct from an
        // array of its fields in order (`["Ada"]`), which no client means.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!(" at `{path}`")
            };
            ApiError::invalid(format!("the JSON body is not valid{at}: {}", e.inner()))
        })?;
        // Nothing but whitespace may follow the object.
        deserializer
            .end()
            .map_err(|e| ApiError::invalid(format!("the JSON body is not valid: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// An RFC 3339 time (`2026-12-01T00:00:00Z`) of the parameter `name`.
pub fn time(name: &str, text: &str) -> Result<UnixMillis, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| UnixMillis(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::invalid(format!(
                "`{name}` must be an RFC 3339 time such as 2026-12-01T00:00:00Z, not {text:?}"
            ))
        })
}

/// A time range: `since` inclusive, `until` exclusive; `since` must come
/// first.
pub fn range(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<UnixMillis>, Option<UnixMillis>), ApiError> {
    let since = since.map(|t| time("since", t)).transpose()?;
    let until = until.map(|t| time("until", t)).transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s.0 >= u.0
    {
        return Err(ApiError::invalid("`since` must be before `until`"));
    }
    Ok((since, until))
}

/// The page size asked for: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when
/// not given.
pub fn limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(format!(
            "`limit` must be 1 to {MAX_LIMIT}, not {n}"
        ))),
    }
}

/// Makes an opaque cursor of the position `key`.
pub fn cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The position a cursor names.
pub fn position(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|position| !position.is_empty())
        .ok_or_else(bad_cursor)
}

/// The answer to a cursor this API did not give out.
pub fn bad_cursor() -> ApiError {
    ApiError::invalid("`cursor` is not one this API gave out")
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// The cursor of the next page (pass it as `cursor`); `null` on the
    /// last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of `items` read with `limit + 1`: the extra item only says
    /// that there is a next page, whose cursor `key` makes from the last
    /// item kept.
    pub fn of(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(|last| cursor(&key(last)))
        } else {
            None
        };
        Page {
            data: items,
            next_cursor,
        }
    }
}
