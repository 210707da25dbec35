//! How a tunnel is served, L7 or L4: decided per service port from the config, the way Istio
//! reads a port's `appProtocol`, never from the tunnel's own bytes (a client that chose its
//! first bytes or their timing would choose whether the plugins see its requests).

use crate::config::AppProtocol;
use crate::downstream::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Requests through the namespace's pipeline; bytes that are not HTTP close the tunnel.
    Http(Mode),
    /// Bytes relayed both ways as they are.
    Tcp,
}

impl Serving {
    /// `declared` is the port's `appProtocols` entry; `has_chain` whether the destination
    /// namespace has plugins. Undeclared ports are HTTP where plugins would otherwise be
    /// bypassed, TCP elsewhere.
    pub fn decide(declared: Option<AppProtocol>, has_chain: bool) -> Serving {
        match declared {
            Some(AppProtocol::Http) => Serving::Http(Mode::Auto),
            Some(AppProtocol::Http2) => Serving::Http(Mode::Http2Only),
            Some(AppProtocol::Tcp) => Serving::Tcp,
            None if has_chain => Serving::Http(Mode::Auto),
            None => Serving::Tcp,
        }
    }

    /// For the access log.
    pub fn mode(self) -> &'static str {
        match self {
            Serving::Http(_) => "L7",
            Serving::Tcp => "L4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_decides_and_plugins_default_to_http() {
        use AppProtocol::*;
        let cases = [
            (None, true, Serving::Http(Mode::Auto)),
            (None, false, Serving::Tcp),
            (Some(Http), true, Serving::Http(Mode::Auto)),
            (Some(Http), false, Serving::Http(Mode::Auto)),
            (Some(Http2), true, Serving::Http(Mode::Http2Only)),
            (Some(Http2), false, Serving::Http(Mode::Http2Only)),
            (Some(Tcp), true, Serving::Tcp),
            (Some(Tcp), false, Serving::Tcp),
        ];
        for (declared, has_chain, want) in cases {
            assert_eq!(
                Serving::decide(declared, has_chain),
                want,
                "{declared:?} {has_chain}"
            );
        }
    }

    #[test]
    fn the_demo_serves_its_services_as_http() {
        let certs = crate::demo::DemoCerts {
            ca: "ca".into(),
            waypoint: "waypoint".into(),
            waypoint_id: crate::tls::SpiffeId::new("cluster.local", "demo", "waypoint").unwrap(),
            frontend: "frontend".into(),
            teller: "teller".into(),
        };
        let store = crate::demo::StoreBackends {
            web: "127.0.0.1:10".parse().unwrap(),
            api: "127.0.0.1:11".parse().unwrap(),
        };
        let config = crate::demo::config(
            "127.0.0.1:9".parse().unwrap(),
            store,
            &certs,
            std::path::Path::new("policies"),
        )
        .unwrap();
        let discovery = crate::discovery::Discovery::from_config(&config);
        for vip in ["10.96.0.10:80", "10.96.0.11:80"] {
            let dest = discovery.resolve_address(vip.parse().unwrap()).unwrap();
            let ns = &config.namespaces[&dest.service.namespace];
            let serving = Serving::decide(dest.app_protocol(), !ns.plugins.is_empty());
            assert_eq!(serving, Serving::Http(Mode::Auto), "{vip}");
        }
    }
}
