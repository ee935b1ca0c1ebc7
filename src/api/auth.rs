//! Who may call the API: admin routes need one of `[api] admin_tokens` as
//! a bearer token (compared in constant time); a customer's API key never
//! opens them. `/me` routes take the customer's own key (or JWT), checked
//! by the auth plugin's authenticator.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mcp_meter_auth::{Authenticator, Identity};
use mcp_meter_plugin::Credentials;
use mcp_meter_plugin::identity::{Customer, CustomerStatus};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::error::ApiError;

/// The bearer token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether `presented` is one of `tokens`, comparing SHA-256 digests in
/// constant time and always looking at every token.
pub fn is_admin_token(presented: &str, tokens: &[String]) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    tokens.iter().fold(false, |found, token| {
        let token = Sha256::digest(token.as_bytes());
        let differ = presented
            .iter()
            .zip(token.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found | (differ == 0)
    })
}

/// Whether `token` is a valid JWT (by `[auth.jwt]`) whose configured role
/// claim holds the admin role.
async fn is_admin_jwt(state: &ApiState, token: &str) -> bool {
    let (Some((claim, role)), Some(verifier)) = (
        &state.admin_jwt,
        state.authenticator.as_ref().and_then(|a| a.jwt()),
    ) else {
        return false;
    };
    // Customer keys and admin tokens are not JWTs: only three dot-separated
    // parts are worth verifying.
    if token.split('.').count() != 3 {
        return false;
    }
    match verifier.verify(token).await {
        Ok(verified) => match verified.claims.get(claim) {
            Some(Value::String(value)) => value == role,
            Some(Value::Array(values)) => values.iter().any(|v| v.as_str() == Some(role)),
            _ => false,
        },
        Err(error) => {
            tracing::debug!(%error, "a bearer token on an admin route is not a valid JWT");
            false
        }
    }
}

/// Middleware of the admin routes.
pub async fn require_admin(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(request.headers()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send an admin token: Authorization: Bearer <token from [api] admin_tokens>",
        )
        .into_response();
    };
    if is_admin_token(token, &state.admin_tokens) || is_admin_jwt(&state, token).await {
        return next.run(request).await;
    }
    if token.starts_with("mcp_") {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a customer API key cannot use the admin API; customers have /api/v1/me",
        )
        .into_response();
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "the admin token is not valid",
    )
    .into_response()
}

/// The customer a self-service request (`/api/v1/me…`) comes from, checked
/// by `authenticator` (the auth plugin's); an active customer only.
pub async fn customer(
    authenticator: Option<&Authenticator>,
    headers: &HeaderMap,
) -> Result<Customer, ApiError> {
    let Some(authenticator) = authenticator else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "self-service needs the auth plugin: customers are identified by their API key",
        ));
    };
    let credentials = Credentials {
        headers: headers.clone(),
        api_key: None,
    };
    // Not a JSON-RPC method: never public, so a credential is required.
    match authenticator.identify(&credentials, "/api/v1/me").await {
        Ok(Identity::Known(known)) => {
            let customer = known.caller.customer.clone();
            if customer.status == CustomerStatus::Suspended {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "customer_suspended",
                    "this customer account is suspended; contact the service operator",
                ));
            }
            Ok(customer)
        }
        Ok(Identity::Anonymous) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send your API key: Authorization: Bearer mcp_…",
        )),
        Err(failure) => Err(ApiError::new(
            StatusCode::from_u16(failure.http_status()).unwrap_or(StatusCode::UNAUTHORIZED),
            failure.public_reason,
            failure.message,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_match_exactly() {
        let tokens = vec!["a".repeat(32), "b".repeat(32)];
        assert!(is_admin_token(&"a".repeat(32), &tokens));
        assert!(is_admin_token(&"b".repeat(32), &tokens));
        assert!(!is_admin_token(&"a".repeat(31), &tokens));
        assert!(!is_admin_token("", &tokens));
        assert!(!is_admin_token(&"a".repeat(32), &[]));
    }
}
