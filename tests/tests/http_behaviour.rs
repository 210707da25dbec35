//! End-to-end: the HTTP behaviour clients and upstreams rely on, through the
//! real listener. A deny while an upload streams, server-sent events,
//! lengths, trailers, gRPC (tonic), WebSocket and extended CONNECT, and the
//! plugin calls that end or replace a response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug_tests::harness::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Bound on every await that talks to a socket.
const T: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {T:?}"))
}

fn plugin(name: &str, url: &str, extra: &str) -> String {
    format!("      - name: {name}\n        url: {url}\n{extra}")
}

fn alpha(plugins: &[String]) -> String {
    format!("namespaces:\n  alpha:\n    plugins:\n{}", plugins.join(""))
}

fn body_fixture() -> String {
    plugin("body", &fixture_url("body"), "")
}

/// A waypoint whose `alpha.test` and `beta.test` lead to `upstream`.
async fn waypoint(upstream: SocketAddr, extra: &str) -> (Waypoint, SocketAddr) {
    let yaml = config_yaml(upstream, extra);
    let config = Config::from_yaml(&yaml, "test.yaml", std::path::Path::new("."))
        .expect("test config is valid");
    let w = Waypoint::start(config, Default::default())
        .await
        .expect("waypoint starts");
    let addr = w.http_addr.unwrap();
    (w, addr)
}

/// Serves `handler` on 127.0.0.1:0: HTTP/1.1 and h2c, with upgrades and
/// extended CONNECT.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

fn full(s: &str) -> Body {
    boxed(Full::new(Bytes::from(s.to_owned())))
}

/// A body of the given data frames (each ready at once), then `trailers`.
fn frames(parts: &[&str], trailers: Option<HeaderMap>) -> Body {
    let mut v: Vec<Result<Frame<Bytes>, BoxError>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from(p.to_string()))))
        .collect();
    if let Some(t) = trailers {
        v.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(v)).boxed_unsync()
}

/// A body the test feeds frame by frame; it ends when the sender drops.
fn fed() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(8);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A request to `alpha.test`, in the form the protocol wants.
fn request(h2: bool, method: &str, path: &str) -> http::request::Builder {
    let b = Request::builder().method(method);
    if h2 {
        b.uri(format!("http://alpha.test{path}"))
            .version(http::Version::HTTP_2)
    } else {
        b.uri(path).header("host", "alpha.test")
    }
}

enum Client {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

async fn client(addr: SocketAddr, h2: bool) -> Client {
    let io = TokioIo::new(within("connect", TcpStream::connect(addr)).await.unwrap());
    if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        Client::H1(s)
    }
}

impl Client {
    async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(s) => within("response head", s.send_request(req)).await,
            Client::H2(s) => within("response head", s.send_request(req)).await,
        }
    }
}

/// What the client got: status, headers, the whole body and trailers.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    trailers: Option<HeaderMap>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request on a fresh connection; `Err` if the stream failed
/// (reset, connection closed) before the response was complete.
async fn exchange(addr: SocketAddr, h2: bool, req: Request<Body>) -> Result<Got, String> {
    let mut c = client(addr, h2).await;
    let resp = c.send(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let collected = within("response body", body.collect())
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    })
}

/// An upstream that answers at once and streams the request body back as
/// it arrives: it answers before the upload is done.
async fn streaming_echo() -> SocketAddr {
    streaming_echo_after(Duration::ZERO).await
}

/// [`streaming_echo`], answering `delay` after the request head arrives
/// (still without waiting for the body).
async fn streaming_echo_after(delay: Duration) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        let mut resp = Response::new(boxed(req.into_body()));
        resp.headers_mut()
            .insert("x-upstream", "streaming".parse().unwrap());
        resp
    })
    .await
}

// ---------------------------------------------------------------------------
// A deny while the upload streams (issue 9, item 7).

/// The body fixture lets `hello ` through and denies the chunk with `deny`.
async fn assert_deny_mid_upload(addr: SocketAddr, h2: bool, what: &str) {
    let req = request(h2, "POST", "/echo")
        .header("x-body-mode", "stream-deny")
        .body(frames(&["hello ", "deny"], None))
        .unwrap();
    let got = exchange(addr, h2, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: the client got no answer: {e}"));
    assert_eq!(got.status, 403, "{what}: {got:?}");
    assert_eq!(got.body, "denied by fixture-body", "{what}");
    assert_eq!(got.header("x-denied-by"), Some("fixture-body"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_mid_upload_reaches_the_client_when_the_upstream_reads_the_whole_body() {
    let rig = rig(&alpha(&[body_fixture()])).await;
    for h2 in [false, true] {
        assert_deny_mid_upload(rig.http, h2, if h2 { "h2c" } else { "HTTP/1.1" }).await;
    }
    // The denied bytes never reached the upstream.
    let seen = rig.upstream.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|s| !s.body.windows(4).any(|w| w == b"deny")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_mid_upload_reaches_the_client_when_the_upstream_streams() {
    // An answer that leaves before the chain has seen `deny` can only be
    // reset (the next test); the client sends both chunks at once, and the
    // upstream's head must not race them here, so it answers a little later.
    let upstream = streaming_echo_after(Duration::from_millis(300)).await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    for h2 in [false, true] {
        assert_deny_mid_upload(addr, h2, if h2 { "h2c" } else { "HTTP/1.1" }).await;
    }
    // And an upload the plugin lets through still streams both ways.
    let req = request(true, "POST", "/echo")
        .header("x-body-mode", "stream-deny")
        .body(frames(&["hello ", "world"], None))
        .unwrap();
    let got = exchange(addr, true, req).await.unwrap();
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, "hello world");
    assert_eq!(got.header("x-upstream"), Some("streaming"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failure_mid_upload_fails_closed_with_503() {
    let rig = rig(&alpha(&[body_fixture()])).await;
    let upstream = streaming_echo().await;
    let (_w, streaming) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    for (addr, kind) in [(rig.http, "reading"), (streaming, "streaming")] {
        for h2 in [false, true] {
            let req = request(h2, "POST", "/echo")
                .header("x-body-mode", "stream-trap")
                .body(frames(&["hello ", "trap"], None))
                .unwrap();
            let got = exchange(addr, h2, req).await.unwrap();
            let what = format!("{kind} upstream, h2 {h2}");
            assert_eq!(got.status, 503, "{what}: {got:?}");
            assert!(
                got.body.contains("plugin `body` in namespace `alpha`"),
                "{what}: {}",
                got.body
            );
            assert!(got.body.contains("FAIL_CLOSE"), "{what}: {}", got.body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_after_the_response_started_resets_the_stream() {
    // The upstream's answer went out before the plugin saw `deny`: the
    // client must not get a clean end of that answer.
    let upstream = streaming_echo().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let (tx, body) = fed();
    let req = request(true, "POST", "/echo")
        .header("x-body-mode", "stream-deny")
        .body(body)
        .unwrap();
    let mut c = client(addr, true).await;
    tx.send(Frame::data(Bytes::from_static(b"hello ")))
        .await
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = within("first echo", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hello ");
    tx.send(Frame::data(Bytes::from_static(b"deny")))
        .await
        .unwrap();
    drop(tx);
    let rest = within("rest of the body", body.collect()).await;
    assert!(rest.is_err(), "the stream ended cleanly: {rest:?}");
}

fn component_guard() -> String {
    plugin(
        "guard",
        &component_url("body-guard"),
        "        pluginConfig: { max_bytes: 40000, forbidden: [DROP TABLE] }\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_body_hook_denies_a_streamed_upload() {
    let rig = rig(&alpha(&[component_guard()])).await;
    let upstream = streaming_echo().await;
    let (_w, streaming) = waypoint(upstream, &alpha(&[component_guard()])).await;
    for (addr, kind) in [(rig.http, "reading"), (streaming, "streaming")] {
        for h2 in [false, true] {
            let what = format!("{kind} upstream, h2 {h2}");
            let req = request(h2, "POST", "/echo")
                .body(frames(&["hello ", "DROP TABLE users"], None))
                .unwrap();
            let got = exchange(addr, h2, req).await.unwrap();
            assert_eq!(got.status, 400, "{what}: {got:?}");
            assert_eq!(got.body, "body contains forbidden text", "{what}");
        }
        // Trailers end the body too: the hook still sees all of it.
        let mut t = HeaderMap::new();
        t.insert("x-client-trailer", "yes".parse().unwrap());
        let req = request(true, "POST", "/echo")
            .body(frames(&["hello ", "DROP TABLE users"], Some(t)))
            .unwrap();
        let got = exchange(addr, true, req).await.unwrap();
        assert_eq!(got.status, 400, "{kind} upstream, with trailers: {got:?}");
    }
}

// ---------------------------------------------------------------------------
// Streaming responses and lengths.

/// An upstream answering with server-sent events the test releases one by
/// one; the head goes out before any event.
async fn sse_upstream() -> (SocketAddr, mpsc::Sender<&'static str>) {
    let (tx, rx) = mpsc::channel::<&'static str>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let addr = serve(move |_req: Request<Incoming>| {
        let rx = rx.lock().unwrap().take();
        async move {
            let Some(rx) = rx else {
                return Response::new(full("one stream per test"));
            };
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|e| (Ok::<_, BoxError>(Frame::data(Bytes::from(e))), rx))
            });
            let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
    })
    .await;
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_the_chain() {
    let pass = plugin("body", &fixture_url("body"), "");
    for (chain, h2) in [
        (String::new(), false),
        (alpha(std::slice::from_ref(&pass)), false),
        (alpha(std::slice::from_ref(&pass)), true),
    ] {
        let what = format!("plugins: {}, h2 {h2}", !chain.is_empty());
        let (upstream, events) = sse_upstream().await;
        let (_w, addr) = waypoint(upstream, &chain).await;
        let mut c = client(addr, h2).await;
        let req = request(h2, "GET", "/events")
            .header("x-body-mode", "pass")
            .body(boxed(Empty::<Bytes>::new()))
            .unwrap();
        // The head arrives while the upstream has sent no event yet.
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        events.send("data: one\n\n").await.unwrap();
        let mut seen = String::new();
        while !seen.contains("data: one\n\n") {
            let frame = within(&what, body.frame()).await.unwrap().unwrap();
            if let Ok(d) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&d));
            }
        }
        // Only now is the second event sent.
        assert_eq!(seen, "data: one\n\n", "{what}");
        events.send("data: two\n\n").await.unwrap();
        drop(events);
        let rest = within(&what, body.collect()).await.unwrap().to_bytes();
        assert_eq!(rest, "data: two\n\n", "{what}");
    }
}

/// An upstream that declares `content-length` and sends the body in
/// `chunks` frames of `size` bytes.
async fn chunked_upstream(chunks: usize, size: usize) -> SocketAddr {
    serve(move |_req: Request<Incoming>| async move {
        let parts: Vec<Result<Frame<Bytes>, BoxError>> = (0..chunks)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i as u8; size]))))
            .collect();
        let mut resp =
            Response::new(StreamBody::new(futures_util::stream::iter(parts)).boxed_unsync());
        resp.headers_mut()
            .insert("content-length", (chunks * size).into());
        resp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_is_kept_when_no_plugin_can_change_the_body() {
    let upstream = chunked_upstream(3, 1000).await;
    // A component without body hooks cannot touch the body.
    let stamp = plugin(
        "stamp",
        &component_url("response-header"),
        "        pluginConfig: { name: x-stamp, value: component }\n",
    );
    let (_w, addr) = waypoint(upstream, &alpha(&[stamp])).await;
    for h2 in [false, true] {
        let req = request(h2, "GET", "/")
            .body(boxed(Empty::<Bytes>::new()))
            .unwrap();
        let got = exchange(addr, h2, req).await.unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.header("x-stamp"), Some("component"));
        assert_eq!(got.header("content-length"), Some("3000"), "h2 {h2}");
        assert_eq!(got.body.len(), 3000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_the_buffer_limit_answers_500() {
    let upstream = chunked_upstream(3, 1000).await;
    let extra = format!(
        "sandbox: {{ maxBufferedBodyBytes: 1500 }}\n{}",
        alpha(&[body_fixture()])
    );
    let (_w, addr) = waypoint(upstream, &extra).await;
    // HTTP/2 keeps the upstream's three frames apart, so the fixture holds
    // the first and overflows on the second.
    let req = request(true, "GET", "/")
        .body(boxed(Empty::<Bytes>::new()))
        .unwrap();
    let got = exchange(addr, true, req).await.unwrap();
    assert_eq!(got.status, 500, "{got:?}");
    assert!(
        got.body
            .contains("response body is larger than the 1500 bytes a plugin may buffer"),
        "{}",
        got.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_in_the_response_body_phase_keeps_its_headers() {
    let rig = rig(&alpha(&[body_fixture()])).await;
    for h2 in [false, true] {
        let req = request(h2, "GET", "/")
            .header("x-body-mode", "respond-in-response-body")
            .body(boxed(Empty::<Bytes>::new()))
            .unwrap();
        let got = exchange(rig.http, h2, req).await.unwrap();
        assert_eq!(got.status, 451, "{got:?}");
        assert_eq!(got.body, "blocked by fixture-body");
        assert_eq!(got.header("x-blocked-by"), Some("fixture-body"));
        assert_eq!(got.header("content-type"), Some("text/x-blocked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stream_in_the_response_phase_resets_the_stream() {
    let rig = rig(&alpha(&[body_fixture()])).await;
    for h2 in [false, true] {
        let req = request(h2, "GET", "/")
            .header("x-body-mode", "reset-response")
            .body(boxed(Empty::<Bytes>::new()))
            .unwrap();
        let got = exchange(rig.http, h2, req).await;
        assert!(got.is_err(), "h2 {h2}: the client got an answer: {got:?}");
    }
    // The plugin's instance and the listener are fine afterwards.
    let ok = send(rig.http, "GET", "alpha.test", "/after", &[], "").await;
    assert_eq!(ok.status, 200);
}

/// An upstream that records the request trailers and answers `world` with
/// trailer `x-upstream-trailer: done`.
async fn trailers_upstream() -> (SocketAddr, Arc<Mutex<Option<HeaderMap>>>) {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let collected = req.into_body().collect().await.unwrap();
            *record.lock().unwrap() = collected.trailers().cloned();
            let mut t = HeaderMap::new();
            t.insert("x-upstream-trailer", "done".parse().unwrap());
            Response::new(frames(&["world"], Some(t)))
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_body_callback_before_trailers_has_end_of_stream_false() {
    let (upstream, seen) = trailers_upstream().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let mut t = HeaderMap::new();
    t.insert("x-client-trailer", "yes".parse().unwrap());
    let req = request(true, "POST", "/")
        .header("x-body-mode", "events")
        .body(frames(&["hello"], Some(t)))
        .unwrap();
    let got = exchange(addr, true, req).await.unwrap();
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, "world");
    let up = seen.lock().unwrap().clone().expect("upstream got trailers");
    assert_eq!(up["x-client-trailer"], "yes");
    assert_eq!(up["x-body-events"], "body:5:false;trailers");
    let down = got.trailers.expect("client got trailers");
    assert_eq!(down["x-upstream-trailer"], "done");
    assert_eq!(down["x-body-events"], "body:5:false;trailers");
}

// ---------------------------------------------------------------------------
// gRPC through the waypoint, with tonic's generic client and server and
// hand-written prost messages (no protoc needed).

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        std::future::ready(Ok(tonic::Response::new(HelloReply {
            message: format!("hello {name}"),
        })))
    }
}

struct Count;

type Replies = futures_util::stream::Iter<std::vec::IntoIter<Result<HelloReply, tonic::Status>>>;

impl tonic::server::ServerStreamingService<HelloRequest> for Count {
    type Response = HelloReply;
    type ResponseStream = Replies;
    type Future = std::future::Ready<Result<tonic::Response<Replies>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        let replies: Vec<_> = (1..=3)
            .map(|i| {
                Ok(HelloReply {
                    message: format!("{name} {i}"),
                })
            })
            .collect();
        std::future::ready(Ok(tonic::Response::new(futures_util::stream::iter(
            replies,
        ))))
    }
}

/// A gRPC upstream (`test.Greeter/SayHello`, `test.Greeter/Count`) that
/// records each call's `te` header.
async fn grpc_upstream() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let te: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = te.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(
                req.headers()
                    .get("te")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
            let codec = tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            let resp = match req.uri().path() {
                "/test.Greeter/SayHello" => grpc.unary(SayHello, req).await,
                "/test.Greeter/Count" => grpc.server_streaming(Count, req).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            };
            resp.map(boxed)
        }
    })
    .await;
    (addr, te)
}

/// tonic's client over one h2c connection to the waypoint.
#[derive(Clone)]
struct H2Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<Request<tonic::body::Body>> for H2Channel {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn grpc_client(addr: SocketAddr) -> tonic::client::Grpc<H2Channel> {
    let io = TokioIo::new(within("connect", TcpStream::connect(addr)).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut grpc =
        tonic::client::Grpc::with_origin(H2Channel(sender), "http://alpha.test".parse().unwrap());
    within("grpc ready", grpc.ready()).await.unwrap();
    grpc
}

fn hello(name: &str, mode: &str) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest { name: name.into() });
    req.metadata_mut()
        .insert("x-body-mode", mode.parse().unwrap());
    req
}

fn codec() -> tonic_prost::ProstCodec<HelloRequest, HelloReply> {
    tonic_prost::ProstCodec::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_work_through_the_waypoint() {
    let (upstream, te) = grpc_upstream().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let mut grpc = grpc_client(addr).await;

    let path = http::uri::PathAndQuery::from_static("/test.Greeter/SayHello");
    let reply = within("unary", grpc.unary(hello("ada", "pass"), path, codec()))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "hello ada");

    let path = http::uri::PathAndQuery::from_static("/test.Greeter/Count");
    let mut stream = within(
        "server streaming",
        grpc.server_streaming(hello("bob", "pass"), path, codec()),
    )
    .await
    .unwrap()
    .into_inner();
    let mut got = Vec::new();
    while let Some(m) = within("next message", stream.message()).await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["bob 1", "bob 2", "bob 3"]);
    // gRPC servers may insist on it: it must survive the hop.
    assert_eq!(
        *te.lock().unwrap(),
        [Some("trailers".to_owned()), Some("trailers".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_body_callbacks_see_end_of_stream_false_before_trailers() {
    let (upstream, _) = grpc_upstream().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let mut grpc = grpc_client(addr).await;
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/SayHello");
    let reply = within("unary", grpc.unary(hello("ada", "events"), path, codec()))
        .await
        .unwrap();
    // tonic merges trailers into the metadata of a unary reply. One
    // message of 5 + 11 bytes, then the trailers.
    let events = reply.metadata().get("x-body-events").unwrap();
    assert_eq!(events.to_str().unwrap(), "body:16:false;trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_grpc_status_reaches_the_grpc_client() {
    let (upstream, te) = grpc_upstream().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let mut grpc = grpc_client(addr).await;
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/SayHello");
    let status = within(
        "unary",
        grpc.unary(hello("eve", "grpc-deny"), path, codec()),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "no entry for you");
    assert!(te.lock().unwrap().is_empty(), "the upstream was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_answers_a_grpc_call_in_grpc() {
    let (upstream, _) = grpc_upstream().await;
    let (_w, addr) = waypoint(upstream, &alpha(&[body_fixture()])).await;
    let mut grpc = grpc_client(addr).await;
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/SayHello");
    // The fixture traps on a request body with `trap` in it: FAIL_CLOSE's
    // 503 becomes UNAVAILABLE, with the reason as the message.
    let status = within(
        "unary",
        grpc.unary(hello("trap", "stream-trap"), path, codec()),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("plugin `body` in namespace `alpha`"),
        "{status:?}"
    );
}

// ---------------------------------------------------------------------------
// WebSocket (HTTP/1.1 Upgrade) and HTTP/2 extended CONNECT.

/// A WebSocket echo server that records the handshake's request headers.
async fn ws_echo() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                use tokio_tungstenite::tungstenite::handshake::server::{
                    ErrorResponse, Request as WsRequest, Response as WsResponse,
                };
                // The signature is tungstenite's; the test cannot shrink it.
                #[allow(clippy::result_large_err)]
                let callback =
                    |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
                        record.lock().unwrap().push(req.headers().clone());
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through_after_the_request_headers() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (upstream, seen) = ws_echo().await;
    let hdr = plugin("hdr", &fixture_url("headers"), "");
    let (_w, addr) = waypoint(upstream, &alpha(&[hdr])).await;

    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let req = "ws://alpha.test/chat".into_client_request().unwrap();
    let (mut ws, resp) = within("handshake", tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        let text = format!("ping {i}");
        within("send", ws.send(Message::text(text.clone())))
            .await
            .unwrap();
        let back = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    within("send", ws.send(Message::binary(vec![0u8, 1, 2])))
        .await
        .unwrap();
    let back = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), [0u8, 1, 2]);
    let _ = ws.close(None).await;
    // The plugin ran on the upgrade request.
    let headers = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["x-fixture-headers"], "seen");

    // And it can refuse one.
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut req = "ws://alpha.test/chat".into_client_request().unwrap();
    req.headers_mut().insert("x-deny", "1".parse().unwrap());
    let err = within("handshake", tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected the plugin's 403, got {other}"),
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused upgrade reached the upstream"
    );
}

/// An HTTP/2 upstream that accepts extended CONNECT and echoes the tunnel.
async fn connect_echo() -> SocketAddr {
    serve(|mut req: Request<Incoming>| async move {
        if req.method() != http::Method::CONNECT {
            return Response::new(full("plain"));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = on.await else { return };
            let mut io = TokioIo::new(io);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Response::new(boxed(Empty::<Bytes>::new()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_extended_connect_passes_through() {
    let upstream = connect_echo().await;
    let hdr = plugin("hdr", &fixture_url("headers"), "");
    let (_w, addr) = waypoint(upstream, &alpha(&[hdr])).await;
    let mut c = client(addr, true).await;
    // A plain request first: both hops then know each other's settings,
    // extended CONNECT included.
    let plain = c
        .send(
            request(true, "GET", "/")
                .body(boxed(Empty::<Bytes>::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);

    let connect = |deny: bool| {
        let mut b = Request::builder()
            .method("CONNECT")
            .uri("http://alpha.test/chat")
            .version(http::Version::HTTP_2)
            .extension(hyper::ext::Protocol::from_static("websocket"));
        if deny {
            b = b.header("x-deny", "1");
        }
        b.body(boxed(Empty::<Bytes>::new())).unwrap()
    };
    let denied = c.send(connect(true)).await.unwrap();
    assert_eq!(denied.status(), 403);

    let resp = c.send(connect(false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let io = within("upgrade", hyper::upgrade::on(resp)).await.unwrap();
    let mut io = TokioIo::new(io);
    for msg in [&b"ping"[..], b"pong pong"] {
        within("write", io.write_all(msg)).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within("read", io.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg);
    }
}
