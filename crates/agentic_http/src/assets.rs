//! The pages a browser loads without a token: the dashboard (built from
//! `web/` by `scripts/build-web` and embedded at compile time; it signs in
//! with the token, exchanged for a session cookie, before it shows
//! anything), or — in a binary built without it — the bare sign-in page
//! with a line saying how to build the dashboard.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::api::Path;
use crate::problem::Problem;

/// The dashboard's built files, by path under `web/dist` (empty when it
/// was not built).
static DASHBOARD: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

const SIGN_IN_HTML: &str = include_str!("../assets/index.html");
const SIGN_IN_JS: &str = include_str!("../assets/sign-in.js");

/// Scripts and styles from this server only, no framing by other sites.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A response of `body` as `content_type`, cached as `cache`.
fn page(content_type: &'static str, cache: &'static str, body: &'static [u8]) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Always asked again (the page that names the hashed files).
const FRESH: &str = "no-cache";
/// Hashed file names change with their content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The embedded dashboard file at `path`, if it was built.
fn dashboard(path: &str) -> Option<&'static [u8]> {
    find(DASHBOARD, path)
}

/// The file at `path` among `files`.
fn find(files: &'static [(&'static str, &'static [u8])], path: &str) -> Option<&'static [u8]> {
    files
        .iter()
        .find_map(|(name, bytes)| (*name == path).then_some(*bytes))
}

/// The content type of a file, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// `/`: the dashboard, or the sign-in page saying how to build it.
pub async fn index() -> Response {
    index_of(DASHBOARD)
}

/// The page at `/` when the dashboard's built files are `files`.
fn index_of(files: &'static [(&'static str, &'static [u8])]) -> Response {
    match find(files, "index.html") {
        Some(html) => page("text/html; charset=utf-8", FRESH, html),
        None => page("text/html; charset=utf-8", FRESH, SIGN_IN_HTML.as_bytes()),
    }
}

/// `/assets/{file}`: the dashboard's scripts and styles, and the bare
/// sign-in page's script.
pub async fn asset(Path(file): Path<String>) -> Result<Response, Problem> {
    if let Some(bytes) = dashboard(&format!("assets/{file}")) {
        return Ok(page(content_type(&file), IMMUTABLE, bytes));
    }
    match file.as_str() {
        "sign-in.js" => Ok(page(
            "text/javascript; charset=utf-8",
            FRESH,
            SIGN_IN_JS.as_bytes(),
        )),
        _ => Err(Problem::not_found(format!("no asset {file}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of `response`.
    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn a_binary_built_without_the_dashboard_says_how_to_build_it() {
        let page = text(index_of(&[])).await;
        assert!(page.contains("scripts/build-web"), "{page}");
        assert!(page.contains("token"), "{page}");
        let built: &'static [(&str, &[u8])] = &[("index.html", b"<p>the dashboard</p>")];
        assert_eq!(text(index_of(built)).await, "<p>the dashboard</p>");
    }

    #[test]
    fn files_are_served_with_their_content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-1a2b.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("assets/index-1a2b.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
