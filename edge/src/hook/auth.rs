//! The hook API's bearer token: read from its file at start, and checked
//! on every request by a middleware ([`require_bearer`]) in front of every
//! route, the 404 and 405 answers included, before any body is read.
//!
//! The token is compared with `subtle`'s constant-time equality, so the
//! time an answer takes does not tell how much of a guess was right (only
//! whether its length was).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::routes::ApiError;
use super::server::HookError;

/// The token every call must bear (`settings.hookApi.tokenFile`).
#[derive(Clone)]
pub(super) struct Token(Arc<[u8]>);

impl Token {
    /// A token of these bytes.
    pub(super) fn new(token: &str) -> Token {
        Token(Arc::from(token.as_bytes()))
    }
}

/// Reads the bearer token: the file's content without surrounding white
/// space.
pub fn read_token(path: &Path) -> Result<String, HookError> {
    let text = std::fs::read_to_string(path).map_err(|source| HookError::TokenRead {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(HookError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Lets a request with the token through; answers any other with 401.
pub(super) async fn require_bearer(
    State(token): State<Token>,
    req: Request,
    next: Next,
) -> Response {
    match authorize(&token, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => unauthorized(denied),
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// No `Authorization` header.
    Missing,
    /// Another scheme than `Bearer`.
    NotBearer,
    /// Another token.
    Invalid,
}

/// `Authorization: Bearer <token>` (the scheme in any case, as RFC 9110
/// says), the token compared in constant time.
fn authorize(token: &Token, headers: &HeaderMap) -> Result<(), Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Denied::Missing)?
        .as_bytes();
    let given = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => return Err(Denied::NotBearer),
    };
    if bool::from(token.0.ct_eq(given)) {
        Ok(())
    } else {
        Err(Denied::Invalid)
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750).
fn unauthorized(denied: Denied) -> Response {
    let (message, challenge) = match denied {
        Denied::Missing => (
            "a bearer token is required (Authorization: Bearer <token>)",
            r#"Bearer realm="portico-edge""#,
        ),
        Denied::NotBearer => (
            "the Authorization header must use the Bearer scheme",
            r#"Bearer realm="portico-edge""#,
        ),
        Denied::Invalid => (
            "the bearer token is not valid",
            r#"Bearer realm="portico-edge", error="invalid_token""#,
        ),
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, message.to_string(), None).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "s3cret-token";

    fn with(value: &str) -> Result<(), Denied> {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        authorize(&Token::new(TOKEN), &h)
    }

    #[test]
    fn tokens_compare_whole() {
        assert_eq!(with(&format!("Bearer {TOKEN}")), Ok(()));
        assert_eq!(with(&format!("bearer  {TOKEN} ")), Ok(()));
        assert_eq!(with(&format!("Bearer {TOKEN}x")), Err(Denied::Invalid));
        assert_eq!(with("Bearer s3cret-toke"), Err(Denied::Invalid));
        assert_eq!(with("Bearer s3cret-tokeN"), Err(Denied::Invalid));
        assert_eq!(with("Bearer "), Err(Denied::Invalid));
        assert_eq!(with("Basic dXNlcjpwdw=="), Err(Denied::NotBearer));
        assert_eq!(with("Bearer"), Err(Denied::NotBearer));
        assert_eq!(
            authorize(&Token::new(TOKEN), &HeaderMap::new()),
            Err(Denied::Missing)
        );
    }

    /// The middleware in front of a route: the route runs only with the
    /// token; without it, 401 with the challenge and the error body.
    #[tokio::test]
    async fn the_middleware_lets_only_the_token_through() {
        let app = Router::new()
            .route("/", get(|| async { "in" }))
            .layer(from_fn_with_state(Token::new(TOKEN), require_bearer));
        let call = |auth: Option<&str>| {
            let mut req = Request::builder().uri("/");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            app.clone().oneshot(req.body(Body::empty()).unwrap())
        };
        let ok = call(Some(&format!("Bearer {TOKEN}"))).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        for (auth, challenge) in [
            (None, r#"Bearer realm="portico-edge""#),
            (Some("Basic dXNlcjpwdw=="), r#"Bearer realm="portico-edge""#),
            (
                Some("Bearer guess"),
                r#"Bearer realm="portico-edge", error="invalid_token""#,
            ),
        ] {
            let denied = call(auth).await.unwrap();
            assert_eq!(denied.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(denied.headers()[header::WWW_AUTHENTICATE], challenge);
            let body = to_bytes(denied.into_body(), 4096).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }

    #[test]
    fn an_empty_or_missing_token_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, " \n").unwrap();
        let err = read_token(&token_file).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(
            err.to_string().contains(&token_file.display().to_string()),
            "{err}"
        );
        let err = read_token(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(err.to_string().contains("absent"), "{err}");
        std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
        assert_eq!(read_token(&token_file).unwrap(), TOKEN);
    }
}
