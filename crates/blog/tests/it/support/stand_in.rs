//! Stand-ins for a peer a test needs: a course-like subscriber or bus,
//! served by a router on a port of its own.

use tokio::task::JoinHandle;

/// Serves `router` on a free loopback port; its base URL and its task.
pub async fn serve(router: axum::Router) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a stand-in");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, server)
}

/// A peer whose `POST /events` answers each event it is sent (the JSON
/// body, `null` if it is not JSON) with `answer`; its base URL and task.
pub async fn on_events<F, R>(answer: F) -> (String, JoinHandle<()>)
where
    F: Fn(serde_json::Value) -> R + Clone + Send + Sync + 'static,
    R: axum::response::IntoResponse,
{
    let router = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: bytes::Bytes| {
            let answer = answer.clone();
            async move { answer(serde_json::from_slice(&body).unwrap_or_default()) }
        }),
    );
    serve(router).await
}

/// A subscriber that fails every event; its `POST /events` URL.
pub async fn failing_subscriber() -> String {
    answering_everything(axum::http::StatusCode::INTERNAL_SERVER_ERROR).await
}

/// A subscriber that is not ready (its `/readyz` and everything else answer
/// 503): the bus holds its events for it; its `POST /events` URL.
pub async fn unready_subscriber() -> String {
    answering_everything(axum::http::StatusCode::SERVICE_UNAVAILABLE).await
}

async fn answering_everything(status: axum::http::StatusCode) -> String {
    let router = axum::Router::new().fallback(move || async move { status });
    let (url, _) = serve(router).await;
    format!("{url}/events")
}
