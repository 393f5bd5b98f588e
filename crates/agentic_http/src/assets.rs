//! The static pages a browser loads without a token: the sign-in page,
//! which exchanges the token for a session cookie, and its script. They
//! are compiled into the binary.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::api::Path;
use crate::problem::Problem;

const SIGN_IN_HTML: &str = include_str!("../assets/index.html");
const SIGN_IN_JS: &str = include_str!("../assets/sign-in.js");

/// Scripts and styles from this server only, no framing by other sites.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/`: the sign-in page.
pub async fn sign_in_page() -> Response {
    page("text/html; charset=utf-8", SIGN_IN_HTML)
}

/// `/assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Result<Response, Problem> {
    match file.as_str() {
        "sign-in.js" => Ok(page("text/javascript; charset=utf-8", SIGN_IN_JS)),
        _ => Err(Problem::not_found(format!("no asset {file}"))),
    }
}
