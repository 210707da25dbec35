//! Service and workload lookup: which service a request is for, which
//! namespace owns it, and which endpoint to send it to.

// Looked up per request; keys come from configuration, not clients.
use foldhash::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{self, AppProtocol, Config, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service matches host `{0}`")]
    UnknownHost(String),
    #[error("service `{service}` has no port {port}")]
    UnknownPort { service: String, port: u16 },
    #[error("service `{service}` port {port} has no endpoints")]
    NoEndpoints { service: String, port: u16 },
}

/// A service as the data path sees it.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// Service port to its endpoints on that port (shared: a request holds
    /// the one it picked without copying its strings).
    ports: HashMap<u16, Vec<Arc<Endpoint>>>,
    /// The protocols the config declares for service ports (`appProtocols`).
    app_protocols: HashMap<u16, AppProtocol>,
    next: AtomicUsize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
}

/// What a request resolved to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub service: Arc<Service>,
    pub port: u16,
}

impl Destination {
    /// The protocol the config declares for this port, if it declares one. Tunnels that name
    /// a workload address have none.
    pub fn app_protocol(&self) -> Option<AppProtocol> {
        self.service.app_protocols.get(&self.port).copied()
    }

    /// Picks the next endpoint, round robin.
    pub fn pick_endpoint(&self) -> Result<Arc<Endpoint>, Error> {
        let eps = self
            .service
            .ports
            .get(&self.port)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::NoEndpoints {
                service: self.service.hostname.clone(),
                port: self.port,
            })?;
        let i = self.service.next.fetch_add(1, Ordering::Relaxed);
        Ok(eps[i % eps.len()].clone())
    }
}

#[derive(Debug, Default)]
pub struct Discovery {
    by_host: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Workloads by each of their addresses, for tunnels that name a pod
    /// directly instead of a service VIP.
    by_workload_ip: HashMap<IpAddr, Arc<WorkloadEntry>>,
}

#[derive(Debug)]
struct WorkloadEntry {
    name: String,
    namespace: String,
    protocol: Protocol,
    service_account: String,
    trust_domain: String,
}

impl Discovery {
    pub fn from_config(config: &Config) -> Discovery {
        let mut d = Discovery::default();
        for svc in &config.services {
            let key = format!("{}/{}", svc.namespace, svc.hostname);
            let mut ports: HashMap<u16, Vec<Arc<Endpoint>>> = HashMap::default();
            for sport in svc.ports.keys() {
                ports.entry(*sport).or_default();
            }
            for wl in &config.workloads {
                let Some(port_map) = wl.services.get(&key) else {
                    continue;
                };
                // ztunnel's local config lists a workload's addresses; the first
                // one is the one it is reached on.
                let ip = wl.workload_ips[0];
                for (sport, tport) in port_map {
                    ports.entry(*sport).or_default().push(Arc::new(Endpoint {
                        address: SocketAddr::new(ip, *tport),
                        protocol: wl.protocol,
                        workload: wl.name.clone(),
                        namespace: wl.namespace.clone(),
                        service_account: wl.service_account.clone(),
                        trust_domain: wl.trust_domain.clone(),
                    }));
                }
            }
            let vips = svc
                .vips
                .iter()
                .filter_map(|v| config::discovery_address(v).ok())
                .collect::<Vec<_>>();
            let service = Arc::new(Service {
                name: svc.name.clone(),
                namespace: svc.namespace.clone(),
                hostname: svc.hostname.to_ascii_lowercase(),
                vips: vips.clone(),
                ports,
                app_protocols: svc.app_protocols.iter().map(|(p, a)| (*p, *a)).collect(),
                next: AtomicUsize::new(0),
            });
            d.by_host.insert(service.hostname.clone(), service.clone());
            for vip in vips {
                d.by_vip.insert(vip, service.clone());
            }
        }
        for wl in &config.workloads {
            let entry = Arc::new(WorkloadEntry {
                name: wl.name.clone(),
                namespace: wl.namespace.clone(),
                protocol: wl.protocol,
                service_account: wl.service_account.clone(),
                trust_domain: wl.trust_domain.clone(),
            });
            for ip in &wl.workload_ips {
                d.by_workload_ip.entry(*ip).or_insert_with(|| entry.clone());
            }
        }
        d
    }

    /// Resolves the `ip:port` an HBONE tunnel names: a service VIP and one of
    /// its ports, or else a workload address (any port; the workload is its
    /// own single endpoint, and its namespace selects the plugin chain).
    pub fn resolve_address(&self, addr: SocketAddr) -> Result<Destination, Error> {
        if let Some(service) = self.by_vip.get(&addr.ip()) {
            if !service.ports.contains_key(&addr.port()) {
                return Err(Error::UnknownPort {
                    service: service.hostname.clone(),
                    port: addr.port(),
                });
            }
            return Ok(Destination {
                service: service.clone(),
                port: addr.port(),
            });
        }
        let wl = self
            .by_workload_ip
            .get(&addr.ip())
            .ok_or_else(|| Error::UnknownHost(addr.to_string()))?;
        let endpoint = Endpoint {
            address: addr,
            protocol: wl.protocol,
            workload: wl.name.clone(),
            namespace: wl.namespace.clone(),
            service_account: wl.service_account.clone(),
            trust_domain: wl.trust_domain.clone(),
        };
        let service = Service {
            name: wl.name.clone(),
            namespace: wl.namespace.clone(),
            hostname: wl.name.clone(),
            vips: vec![addr.ip()],
            ports: [(addr.port(), vec![Arc::new(endpoint)])]
                .into_iter()
                .collect(),
            app_protocols: HashMap::default(),
            next: AtomicUsize::new(0),
        };
        Ok(Destination {
            service: Arc::new(service),
            port: addr.port(),
        })
    }

    /// Resolves an HTTP authority (`host[:port]`, a VIP literal, or a
    /// bracketed IPv6 literal); the port defaults to `default_port`.
    pub fn resolve_authority(
        &self,
        authority: &str,
        default_port: u16,
    ) -> Result<Destination, Error> {
        let (host, port) = split_authority(authority, default_port)
            .ok_or_else(|| Error::UnknownHost(authority.to_owned()))?;
        let service = match host.parse::<IpAddr>() {
            Ok(ip) => self.by_vip.get(&ip),
            Err(_) => self.by_host.get(&host.to_ascii_lowercase()),
        }
        .ok_or_else(|| Error::UnknownHost(host.to_owned()))?;
        if !service.ports.contains_key(&port) {
            return Err(Error::UnknownPort {
                service: service.hostname.clone(),
                port,
            });
        }
        Ok(Destination {
            service: service.clone(),
            port,
        })
    }
}

fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => Some((authority, default_port)),
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn discovery() -> Discovery {
        let c = Config::from_yaml(
            r#"
services:
  - { name: a, namespace: ns1, hostname: a.ns1.svc, vips: ["/10.0.0.1"], ports: { 80: 8080, 5432: 5432 }, appProtocols: { 5432: TCP } }
  - { name: b, namespace: ns2, hostname: b.ns2.svc, ports: { 80: 80, 9090: 9090 } }
workloads:
  - { uid: u1, name: a-1, namespace: ns1, workloadIps: [127.0.0.2], services: { ns1/a.ns1.svc: { 80: 8080 } } }
  - { uid: u2, name: a-2, namespace: ns1, workloadIps: [127.0.0.3], services: { ns1/a.ns1.svc: { 80: 8081 } } }
"#,
            "t",
            Path::new("."),
        )
        .unwrap();
        Discovery::from_config(&c)
    }

    #[test]
    fn resolves_hosts_vips_and_ports() {
        let d = discovery();
        let cases = [
            ("a.ns1.svc", Some(("ns1", 80))),
            ("A.NS1.SVC:80", Some(("ns1", 80))),
            ("10.0.0.1:80", Some(("ns1", 80))),
            ("b.ns2.svc:9090", Some(("ns2", 9090))),
            ("b.ns2.svc:81", None),
            ("c.ns3.svc", None),
            ("", None),
            ("[::1]:80", None),
        ];
        for (auth, want) in cases {
            let got = d
                .resolve_authority(auth, 80)
                .ok()
                .map(|dst| (dst.service.namespace.clone(), dst.port));
            assert_eq!(got, want.map(|(n, p)| (n.to_owned(), p)), "{auth}");
        }
    }

    #[test]
    fn round_robins_endpoints_and_reports_empty_ports() {
        let d = discovery();
        let dst = d.resolve_authority("a.ns1.svc", 80).unwrap();
        let a = dst.pick_endpoint().unwrap().address;
        let b = dst.pick_endpoint().unwrap().address;
        assert_ne!(a, b);
        assert_eq!(a.port() + b.port(), 8080 + 8081);
        let empty = d.resolve_authority("b.ns2.svc", 80).unwrap();
        assert!(matches!(
            empty.pick_endpoint(),
            Err(Error::NoEndpoints { .. })
        ));
    }

    #[test]
    fn resolves_tunnel_addresses() {
        let d = discovery();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let vip = d.resolve_address(addr("10.0.0.1:80")).unwrap();
        assert_eq!(vip.service.hostname, "a.ns1.svc");
        assert!(matches!(
            d.resolve_address(addr("10.0.0.1:81")),
            Err(Error::UnknownPort { port: 81, .. })
        ));
        // A workload address: any port, the workload itself is the endpoint.
        let pod = d.resolve_address(addr("127.0.0.3:9999")).unwrap();
        assert_eq!(pod.service.namespace, "ns1");
        assert_eq!(pod.service.name, "a-2");
        let ep = pod.pick_endpoint().unwrap();
        assert_eq!(ep.address, addr("127.0.0.3:9999"));
        assert_eq!(ep.service_account, "default");
        assert_eq!(vip.app_protocol(), None);
        let db = d.resolve_address(addr("10.0.0.1:5432")).unwrap();
        assert_eq!(db.app_protocol(), Some(AppProtocol::Tcp));
        assert_eq!(pod.app_protocol(), None);
        let err = d.resolve_address(addr("10.9.9.9:80")).unwrap_err();
        assert_eq!(err.to_string(), "no service matches host `10.9.9.9:80`");
    }

    #[test]
    fn splits_authorities() {
        assert_eq!(split_authority("h:81", 80), Some(("h", 81)));
        assert_eq!(split_authority("h", 80), Some(("h", 80)));
        assert_eq!(split_authority("[::1]:9", 80), Some(("::1", 9)));
        assert_eq!(split_authority("[::1]", 80), Some(("::1", 80)));
        assert_eq!(split_authority("h:x", 80), None);
    }
}
