//! What one plugin callback may change on an exchange, kept so that a
//! callback that fails leaves nothing behind: under FAIL_OPEN the request
//! goes on as if the plugin had not run that callback, and a FAIL_RELOAD
//! retry starts from the state the failed attempt started from.
//!
//! The heads, trailers, local response, route, reset flag and properties are
//! copied; bodies only when asked, since they can be large and only body
//! callbacks (and callout answers, which may arrive during one) touch them.

use std::collections::HashMap;

use bytes::BytesMut;
use http::HeaderMap;

use super::{ExchangeState, LocalResponse, RequestHead, ResponseHead, RouteChoice};

pub struct Snapshot {
    request: RequestHead,
    request_trailers: Option<HeaderMap>,
    response: Option<ResponseHead>,
    response_trailers: Option<HeaderMap>,
    local_response: Option<LocalResponse>,
    route: Option<RouteChoice>,
    reset: bool,
    properties: HashMap<String, Vec<u8>>,
    bodies: Option<(BytesMut, BytesMut)>,
}

impl ExchangeState {
    /// A copy of what a callback may change; `with_bodies` includes both
    /// body buffers.
    pub fn snapshot(&self, with_bodies: bool) -> Snapshot {
        Snapshot {
            request: self.request.clone(),
            request_trailers: self.request_trailers.clone(),
            response: self.response.clone(),
            response_trailers: self.response_trailers.clone(),
            local_response: self.local_response.clone(),
            route: self.route.clone(),
            reset: self.reset,
            properties: self.properties.clone(),
            bodies: with_bodies.then(|| (self.request_body.clone(), self.response_body.clone())),
        }
    }

    /// Puts back what `snapshot` copied, discarding a failed callback's
    /// changes.
    pub fn restore(&mut self, s: Snapshot) {
        self.request = s.request;
        self.request_trailers = s.request_trailers;
        self.response = s.response;
        self.response_trailers = s.response_trailers;
        self.local_response = s.local_response;
        self.route = s.route;
        self.reset = s.reset;
        self.properties = s.properties;
        if let Some((request_body, response_body)) = s.bodies {
            self.request_body = request_body;
            self.response_body = response_body;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{Method, StatusCode};

    use super::super::{Exchange, RequestInfo};
    use super::*;

    fn exchange() -> Exchange {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Exchange::new(
            RequestInfo {
                id: "1".into(),
                namespace: "ns".into(),
                service_hostname: "svc".into(),
                service_name: "svc".into(),
                source: addr,
                destination: addr,
                protocol: "HTTP/1.1",
                peer: None,
                start: SystemTime::now(),
            },
            RequestHead {
                method: Method::GET,
                scheme: "http".into(),
                authority: "svc".into(),
                path: "/".into(),
                headers: HeaderMap::new(),
            },
        )
    }

    #[test]
    fn restore_discards_every_change_a_callback_made() {
        let ex = exchange();
        let before = ex.lock().snapshot(true);
        {
            let mut st = ex.lock();
            st.request.headers.insert("x-added", "1".parse().unwrap());
            st.request.path = "/changed".into();
            st.local_response = Some(LocalResponse {
                status: StatusCode::IM_A_TEAPOT,
                headers: vec![],
                body: Bytes::new(),
                details: String::new(),
                plugin: "p".into(),
                grpc_status: None,
            });
            st.route = Some(RouteChoice {
                service: "other".into(),
                port: None,
                rewrite_path: None,
                rewrite_host: None,
                plugin: "p".into(),
            });
            st.reset = true;
            st.properties.insert("k".into(), b"v".to_vec());
            st.request_body.extend_from_slice(b"replaced");
        }
        ex.lock().restore(before);
        let st = ex.lock();
        assert!(st.request.headers.is_empty());
        assert_eq!(st.request.path, "/");
        assert!(st.local_response.is_none());
        assert!(st.route.is_none());
        assert!(!st.reset);
        assert!(st.properties.is_empty());
        assert!(st.request_body.is_empty());
    }

    #[test]
    fn bodies_are_kept_only_when_asked() {
        let ex = exchange();
        let before = ex.lock().snapshot(false);
        ex.lock().request_body.extend_from_slice(b"kept");
        ex.lock().restore(before);
        assert_eq!(&ex.lock().request_body[..], b"kept");
    }
}
