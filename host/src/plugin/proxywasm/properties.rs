//! Properties: Envoy's attribute names plus Wayplug's own.
//!
//! A path arrives as segments joined by NUL bytes. Strings are returned raw,
//! integers as 8-byte little-endian, booleans as one byte.

use std::time::UNIX_EPOCH;

use super::instance::HostState;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn string(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

/// Joins the segments of a property path with dots, the key `set_property`
/// values are stored under.
fn dotted(path: &[u8]) -> String {
    path.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s))
        .collect::<Vec<_>>()
        .join(".")
}

pub fn get(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
    let seg = |i: usize| segments.get(i).and_then(|s| std::str::from_utf8(s).ok());
    let plugin = &state.plugin;

    // Values the plugin set take precedence, as in Envoy's filter state.
    let key = dotted(path);
    let exchange = state.current_exchange();
    if let Some(ex) = &exchange
        && let Some(v) = ex.lock().properties.get(&key)
    {
        return Some(v.clone());
    }
    if let Some(v) = state.root_properties.get(&key) {
        return Some(v.clone());
    }

    match (seg(0)?, seg(1)) {
        ("plugin_name", None) => return Some(string(plugin.name.clone())),
        ("plugin_root_id", None) => return Some(string(plugin.root_id.clone())),
        ("plugin_vm_id", None) => return Some(string(plugin.vm_id.clone())),
        ("node", Some("id")) => return Some(string(format!("wayplug~{}", plugin.namespace))),
        ("wayplug", Some("namespace")) => return Some(string(plugin.namespace.clone())),
        ("wayplug", Some("plugin")) => return Some(string(plugin.name.clone())),
        _ => {}
    }

    let ex = exchange?;
    let info = &ex.info;
    let st = ex.lock();
    let req = &st.request;
    let (url_path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path.as_str(), ""),
    };
    let header = |h: &http::HeaderMap, name: &str| h.get(name).map(|v| v.as_bytes().to_vec());
    let peer = info.peer.as_ref();
    Some(match (seg(0)?, seg(1), seg(2)) {
        ("request", Some("path"), None) => string(req.path.clone()),
        ("request", Some("url_path"), None) => string(url_path),
        ("request", Some("query"), None) => string(query),
        ("request", Some("host"), None) => string(req.authority.clone()),
        ("request", Some("scheme"), None) => string(req.scheme.clone()),
        ("request", Some("method"), None) => string(req.method.as_str()),
        ("request", Some("id"), None) => string(info.id.clone()),
        ("request", Some("protocol"), None) => string(info.protocol),
        ("request", Some("time"), None) => int(info
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)),
        ("request", Some("headers"), Some(name)) => {
            header(&req.headers, &name.to_ascii_lowercase())?
        }
        ("request", Some("useragent"), None) => header(&req.headers, "user-agent")?,
        ("request", Some("referer"), None) => header(&req.headers, "referer")?,
        ("response", Some("code"), None) => int(st.response.as_ref()?.status.as_u16() as i64),
        ("response", Some("headers"), Some(name)) => {
            header(&st.response.as_ref()?.headers, &name.to_ascii_lowercase())?
        }
        ("source", Some("address"), None) => string(info.source.to_string()),
        ("source", Some("port"), None) => int(info.source.port() as i64),
        ("source", Some("principal"), None) => string(peer?.principal()),
        ("source", Some("namespace"), None) => string(peer?.namespace.clone()),
        ("source", Some("service_account"), None) => string(peer?.service_account.clone()),
        ("destination", Some("address"), None) => string(info.destination.to_string()),
        ("destination", Some("port"), None) => int(info.destination.port() as i64),
        ("connection", Some("mtls"), None) => vec![peer.is_some() as u8],
        ("connection", Some("uri_san_peer_certificate"), None) => string(peer?.spiffe_uri()),
        ("connection", Some("tls_version"), None) => {
            peer?;
            string("TLSv1.3")
        }
        ("wayplug", Some("service"), None) => string(info.service_hostname.clone()),
        ("wayplug", Some("request_id"), None) => string(info.id.clone()),
        _ => return None,
    })
}

pub fn set(state: &mut HostState, path: &[u8], value: Vec<u8>) {
    let key = dotted(path);
    match state.current_exchange() {
        Some(ex) => {
            ex.lock().properties.insert(key, value);
        }
        None => {
            state.root_properties.insert(key, value);
        }
    }
}
