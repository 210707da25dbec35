//! End-to-end: gRPC callouts from Proxy-Wasm plugins (`fixture-grpc-authz`,
//! `fixture-grpc-stream`, written with the Rust SDK) to a real tonic server
//! on loopback, over h2c and TLS; statuses as Envoy delivers them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wayplug_tests::harness::*;

// Hand-written prost messages: the service the fixtures call.

#[derive(Clone, PartialEq, prost::Message)]
struct CheckRequest {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(string, tag = "2")]
    path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CheckResponse {
    #[prost(bool, tag = "1")]
    allowed: bool,
    #[prost(string, tag = "2")]
    reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountReply {
    #[prost(string, tag = "1")]
    text: String,
}

/// `authz.Authz/Check`: `alice` may pass; `sleepy` is answered after 3 s;
/// `broken` fails UNAVAILABLE; anyone else is denied. The reason names
/// what the call carried: the caller metadata, the `:authority` and
/// whether a deadline was sent.
struct Check {
    authority: String,
}

impl tonic::server::UnaryService<CheckRequest> for Check {
    type Response = CheckResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<CheckResponse>, tonic::Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<CheckRequest>) -> Self::Future {
        let caller = req
            .metadata()
            .get("x-caller")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let deadline = req.metadata().get("grpc-timeout").is_some();
        let authority = self.authority.clone();
        let CheckRequest { user, path } = req.into_inner();
        Box::pin(async move {
            let facts = format!("caller {caller}, authority {authority}, deadline {deadline}");
            match user.as_str() {
                "alice" => Ok(tonic::Response::new(CheckResponse {
                    allowed: true,
                    reason: format!("alice may pass {path} ({facts})"),
                })),
                "sleepy" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(tonic::Response::new(CheckResponse {
                        allowed: true,
                        reason: "too late".into(),
                    }))
                }
                "broken" => Err(tonic::Status::unavailable("authz backend down")),
                other => Ok(tonic::Response::new(CheckResponse {
                    allowed: false,
                    reason: format!("unknown user {other}"),
                })),
            }
        })
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<CountReply, tonic::Status>> + Send>>;

/// `test.Counter/Count`: initial metadata `x-init: hello`, `count` replies
/// `<name> <i>`, then trailers with `x-trail: bye`. More than 5 asked
/// fails RESOURCE_EXHAUSTED after the fifth.
struct Count;

impl tonic::server::ServerStreamingService<CountRequest> for Count {
    type Response = CountReply;
    type ResponseStream = Replies;
    type Future = std::future::Ready<Result<tonic::Response<Replies>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<CountRequest>) -> Self::Future {
        let stream_md = req
            .metadata()
            .get("x-stream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let CountRequest { name, count } = req.into_inner();
        let mut items: Vec<Result<CountReply, tonic::Status>> = (1..=count.min(5))
            .map(|i| {
                Ok(CountReply {
                    text: format!("{name} {i} ({stream_md})"),
                })
            })
            .collect();
        if count > 5 {
            items.push(Err(tonic::Status::resource_exhausted("at most 5")));
        } else {
            // An OK status as the stream's end carries custom trailers.
            let mut end = tonic::Status::ok("");
            end.metadata_mut().insert("x-trail", "bye".parse().unwrap());
            items.push(Err(end));
        }
        let mut resp = tonic::Response::new(Box::pin(futures_util::stream::iter(items)) as Replies);
        resp.metadata_mut()
            .insert("x-init", "hello".parse().unwrap());
        std::future::ready(Ok(resp))
    }
}

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn grpc_service(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let resp = match req.uri().path() {
        "/authz.Authz/Check" => {
            let codec = tonic_prost::ProstCodec::<CheckResponse, CheckRequest>::default();
            tonic::server::Grpc::new(codec)
                .unary(Check { authority }, req)
                .await
        }
        "/test.Counter/Count" => {
            let codec = tonic_prost::ProstCodec::<CountReply, CountRequest>::default();
            tonic::server::Grpc::new(codec)
                .server_streaming(Count, req)
                .await
        }
        _ => tonic::Status::unimplemented("no such method").into_http(),
    };
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync()))
}

/// The gRPC server over h2c on loopback.
async fn grpc_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service_fn(grpc_service))
                    .await;
            });
        }
    });
    addr
}

/// The same server behind TLS with a certificate for `authz.test` from a
/// CA of its own; returns the address and the CA's PEM.
async fn grpc_tls_server() -> (SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["authz.test".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key_der)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tls), service_fn(grpc_service))
                    .await;
            });
        }
    });
    (addr, ca_pem)
}

/// A port nothing listens on: bound, then closed.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn plugin(ns: &str, fixture: &str, config: &str) -> String {
    format!(
        "  {ns}:\n    plugins:\n      - name: {fixture}\n        url: {}\n        pluginConfig: {config}\n",
        fixture_url(fixture)
    )
}

async fn get(rig: &Rig, host: &str, headers: &[(&str, &str)]) -> Reply {
    send(rig.http, "GET", host, "/allowed/item", headers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grpc_authz_allows_and_denies_on_the_answer() {
    let server = grpc_server().await;
    let rig = rig(&format!(
        "upstreams:\n  authz: {{ address: \"{server}\" }}\nnamespaces:\n{}",
        plugin("alpha", "grpc-authz", "{ upstream: authz }")
    ))
    .await;

    // Allowed: the request goes on, with the service's reason added.
    let ok = get(&rig, "alpha.test", &[("x-user", "alice")]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, "upstream saw /allowed/item");
    let seen = rig.upstream.last();
    assert_eq!(
        seen.headers["x-authz-reason"],
        "alice may pass /allowed/item (caller grpc-authz-fixture, authority authz, deadline true)"
    );

    // Denied by the answer: the upstream never sees it.
    let before = rig.upstream.count();
    let denied = get(&rig, "alpha.test", &[("x-user", "mallory")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied: unknown user mallory");
    // The service failing: the plugin reads its status and message.
    let failed = get(&rig, "alpha.test", &[("x-user", "broken")]).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.body, "authz failed: 14 authz backend down");
    assert_eq!(rig.upstream.count(), before);

    // Over h2c too, and many at once on one VM: each gets its own answer.
    let many = (0..8).map(|i| {
        let user = if i % 2 == 0 { "alice" } else { "mallory" };
        let addr = rig.http;
        async move {
            let r = send_h2(addr, "GET", "alpha.test", "/x", &[("x-user", user)], "").await;
            (user, r)
        }
    });
    for (user, r) in futures_util::future::join_all(many).await {
        let want = if user == "alice" { 200 } else { 403 };
        assert_eq!(r.status, want, "{user}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_delivers_metadata_messages_trailers_and_close() {
    let server = grpc_server().await;
    let rig = rig(&format!(
        "upstreams:\n  counter: {{ address: \"{server}\" }}\nnamespaces:\n{}",
        plugin("alpha", "grpc-stream", "{ upstream: counter }")
    ))
    .await;

    let r = get(&rig, "alpha.test", &[("x-name", "tick"), ("x-count", "3")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "initial x-init=hello\n\
         message tick 1 (fixture)\n\
         message tick 2 (fixture)\n\
         message tick 3 (fixture)\n\
         trailing x-trail=bye\n\
         close 0 \n"
    );

    // A stream the server ends with an error: messages, then its status.
    let r = get(&rig, "alpha.test", &[("x-name", "n"), ("x-count", "7")]).await;
    assert_eq!(r.status, 200);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.first(), Some(&"initial x-init=hello"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("message ")).count(),
        5
    );
    assert_eq!(lines.last(), Some(&"close 8 at most 5"), "{}", r.body);
    assert_eq!(
        rig.upstream.count(),
        0,
        "the fixture answers every request itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_unknown_and_unreachable_upstreams_answer_as_envoy_does() {
    let server = grpc_server().await;
    let down = closed_port().await;
    let rig = rig(&format!(
        "upstreams:\n  authz: {{ address: \"{server}\" }}\n  down: {{ address: \"{down}\" }}\n\
         namespaces:\n{}{}",
        plugin("alpha", "grpc-authz", "{ upstream: authz, timeoutMs: 300 }"),
        plugin("beta", "grpc-authz", "{ upstream: nowhere }"),
    ))
    .await;

    // The service answers after 3 s; the call's deadline is 300 ms.
    let late = get(&rig, "alpha.test", &[("x-user", "sleepy")]).await;
    assert_eq!(late.status, 503);
    assert_eq!(late.body, "authz failed: 4 deadline exceeded after 300 ms");
    // The VM serves on after an abandoned call.
    let ok = get(&rig, "alpha.test", &[("x-user", "alice")]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // No upstream of that name: Envoy's PARSE_FAILURE at call time.
    let unknown = get(&rig, "beta.test", &[("x-user", "alice")]).await;
    assert_eq!(unknown.status, 500);
    assert_eq!(unknown.body, "grpc dispatch failed: ParseFailure");

    drop(rig);
    // A configured upstream nobody listens on: UNAVAILABLE on close.
    let unreachable = wayplug_tests::harness::rig(&format!(
        "upstreams:\n  down: {{ address: \"{down}\" }}\nnamespaces:\n{}",
        plugin("alpha", "grpc-authz", "{ upstream: down }"),
    ))
    .await;
    let r = get(&unreachable, "alpha.test", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .starts_with("authz failed: 14 upstream `down`: connect error"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callouts_reach_a_tls_upstream() {
    let (server, ca_pem) = grpc_tls_server().await;
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-grpc-tls-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let rig = rig(&format!(
        "upstreams:\n  authz: {{ address: \"{server}\", tls: {{ caFile: \"{}\", serverName: authz.test }} }}\n\
         namespaces:\n{}",
        ca.display(),
        plugin("alpha", "grpc-authz", "{ upstream: authz }"),
    ))
    .await;
    let ok = get(&rig, "alpha.test", &[("x-user", "alice")]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        rig.upstream.last().headers["x-authz-reason"]
            .to_str()
            .unwrap()
            .starts_with("alice may pass /allowed/item")
    );
    let denied = get(&rig, "alpha.test", &[("x-user", "eve")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied: unknown user eve");

    // A CA that did not issue the server's certificate: the handshake
    // fails and the call closes UNAVAILABLE.
    let other = dir.join("other-ca.pem");
    let (_, other_pem) = grpc_tls_server().await;
    std::fs::write(&other, other_pem).unwrap();
    let untrusted = wayplug_tests::harness::rig(&format!(
        "upstreams:\n  authz: {{ address: \"{server}\", tls: {{ caFile: \"{}\", serverName: authz.test }} }}\n\
         namespaces:\n{}",
        other.display(),
        plugin("alpha", "grpc-authz", "{ upstream: authz }"),
    ))
    .await;
    let r = get(&untrusted, "alpha.test", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.starts_with("authz failed: 14 "), "{}", r.body);

    // A caFile that is not PEM is refused at load, naming the field.
    std::fs::write(dir.join("bad.pem"), "not a certificate").unwrap();
    let yaml = config_yaml(
        server,
        &format!("upstreams:\n  authz: {{ address: \"{server}\", tls: {{ caFile: bad.pem }} }}\n"),
    );
    let err = wayplug::config::Config::from_yaml(&yaml, "t.yaml", dir).unwrap_err();
    assert!(
        err.to_string().contains("upstreams.authz.tls.caFile"),
        "{err}"
    );
}
