//! Serving the built React client, as `client-srv` does in the cluster.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
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
}

async fn serve(State(dir): State<PathBuf>, request: Request<Body>) -> Response {
    let index = dir.join("index.html");
    if !index.is_file() {
        return (StatusCode::OK, Html(NOT_BUILT)).into_response();
    }
    let files = ServeDir::new(&dir).fallback(ServeFile::new(index));
    match files.oneshot(request).await {
        Ok(mut response) => {
            // Vite names assets by content hash: they never change.
            if response.status() == StatusCode::OK
                && response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|ct| !ct.as_bytes().starts_with(b"text/html"))
            {
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("public, max-age=3600"),
                );
            }
            response.into_response()
        }
        Err(never) => match never {},
    }
}
