//! The HTTP server of `/metrics` and `/healthz`: hyper (HTTP/1.1) on a thread of its own with a
//! one-thread tokio runtime, so that a slow or hostile scraper never touches the threads that
//! read the buffers. Each request renders from the registry at that moment.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::exposition::{render, CONTENT_TYPE as METRICS_TYPE};
use super::registry::Registry;

/// Longest a client may take to send its request's head (a connection that sends nothing is
/// closed then).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A running metrics server; stopped when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `address` (before anything is attached, so that an address in use is a usage error).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl MetricsServer {
    /// Serves `registry` on `listener` (from [`bind`]) until dropped.
    pub fn start(listener: TcpListener, registry: Arc<Registry>) -> io::Result<Self> {
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            runtime.block_on(serve(listener, registry, stopped));
        })?;
        Ok(MetricsServer { address, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until `stopped`; connections still open then are dropped with the runtime.
async fn serve(listener: TcpListener, registry: Arc<Registry>, mut stopped: oneshot::Receiver<()>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors or the like: wait a little instead of spinning.
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, registry.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, registry: Arc<Registry>) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()));
    }
    let response = match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, render(&registry));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
            response
        }
        "/healthz" => match registry.health() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(reasons) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reasons}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics or /healthz\n".into()),
    };
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
