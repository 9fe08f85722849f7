//! Serving the built React client, as `client-srv` does in the cluster.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Blog</title></head>\
<body><h1>The client is not built yet</h1><p>The services are running. Build the client with \
<code>npm ci --prefix client &amp;&amp; npm run build --prefix client</code> (the quick-start command does this), \
then reload this page.</p></body></html>";

/// Health routes plus the files of `dir`; any path that is not a file gets
/// `index.html`, so client-side routes load the app. Until `dir` holds a
/// build, every page says how to build it.
pub fn client_router(dir: PathBuf) -> Router {
    Router::new()
        .fallback(serve)
        .with_state(dir)
        .merge(blog_kit::health::routes(blog_kit::health::always_ready()))
        .layer(axum::middleware::from_fn(blog_kit::http::json_errors))
}

/// What the page may load and do: only its own scripts, styles and
/// connections (the API and the live stream are same-origin), no inline
/// script, never inside a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Vite puts every built asset here, named by the hash of its content.
const HASHED_ASSETS: &str = "/assets/";

async fn serve(State(dir): State<PathBuf>, request: Request<Body>) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return blog_kit::ApiError::MethodNotAllowed.into_response();
    }
    let hashed = request.uri().path().starts_with(HASHED_ASSETS);
    let index = dir.join("index.html");
    let mut response = if index.is_file() {
        let files = ServeDir::new(&dir).fallback(ServeFile::new(index));
        match files.oneshot(request).await {
            Ok(response) => response.into_response(),
            Err(never) => match never {},
        }
    } else {
        (StatusCode::OK, Html(NOT_BUILT)).into_response()
    };
    let headers = response.headers_mut();
    let html = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"text/html"));
    if html {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    // A hashed asset never changes; the page that names them is checked
    // again every time, so a new build shows at once.
    let cache = if hashed && response.status() == StatusCode::OK {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    async fn get(router: &Router, method: Method, path: &str) -> Response {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn files_are_served_with_security_and_cache_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("index.html"),
            "<!doctype html><title>t</title>",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/index-3f2a1b.js"), "console.log(1)").unwrap();
        let router = client_router(dir.path().to_owned());

        for path in ["/", "/some/client/route"] {
            let page = get(&router, Method::GET, path).await;
            assert_eq!(page.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&page, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(
                header(&page, header::CACHE_CONTROL),
                "no-cache",
                "the page is revalidated"
            );
            assert_eq!(header(&page, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header(&page, header::X_FRAME_OPTIONS), "DENY");
            assert!(!header(&page, header::REFERRER_POLICY).is_empty());
            let csp = header(&page, header::CONTENT_SECURITY_POLICY);
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "{csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        }
        let asset = get(&router, Method::GET, "/assets/index-3f2a1b.js").await;
        assert_eq!(asset.status(), StatusCode::OK);
        assert!(header(&asset, header::CACHE_CONTROL).contains("immutable"));
        assert_eq!(header(&asset, header::X_CONTENT_TYPE_OPTIONS), "nosniff");

        // Files are read, never written: other methods get the JSON 405.
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let refused = get(&router, method.clone(), "/index.html").await;
            assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(header(&refused, header::CONTENT_TYPE), "application/json");
        }
    }

    #[tokio::test]
    async fn before_a_build_the_page_says_how_to_build_it_with_the_same_headers() {
        let dir = tempfile::tempdir().unwrap();
        let page = get(&client_router(dir.path().to_owned()), Method::GET, "/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            header(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert!(!header(&page, header::CONTENT_SECURITY_POLICY).is_empty());
    }
}
