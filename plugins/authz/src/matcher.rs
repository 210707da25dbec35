//! The value matchers of AuthorizationPolicy: Istio's string forms (exact,
//! `prefix*`, `*suffix`, `*`), path templates (`{*}`, `{**}`), IP blocks
//! and ports.

use std::net::IpAddr;

use ipnet::IpNet;

/// One string value of a policy field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: the value is present and not empty.
    Presence,
}

impl StrMatch {
    /// Reads Istio's forms. `lower` folds the pattern to lower case, for
    /// fields matched case-insensitively (hosts).
    pub fn parse(pattern: &str, lower: bool) -> StrMatch {
        let pattern = if lower {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_string()
        };
        if pattern == "*" {
            StrMatch::Presence
        } else if let Some(rest) = pattern.strip_prefix('*') {
            StrMatch::Suffix(rest.to_string())
        } else if let Some(rest) = pattern.strip_suffix('*') {
            StrMatch::Prefix(rest.to_string())
        } else {
            StrMatch::Exact(pattern)
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(s) => value == s,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Suffix(s) => value.ends_with(s.as_str()),
            StrMatch::Presence => !value.is_empty(),
        }
    }
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: zero or more segments; only last.
    Many,
}

/// A `paths` value: an Istio string form or a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Str(StrMatch),
    Template(Vec<Segment>),
}

impl PathMatch {
    /// Reads a `paths` value; templates are checked as Istio validates them.
    pub fn parse(pattern: &str) -> Result<PathMatch, String> {
        if !pattern.contains('{') && !pattern.contains('}') {
            return Ok(PathMatch::Str(StrMatch::parse(pattern, false)));
        }
        if !pattern.starts_with('/') {
            return Err(format!("path template `{pattern}` must start with `/`"));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Many,
                "{**}" => {
                    return Err(format!(
                        "path template `{pattern}`: `{{**}}` must be the last segment"
                    ));
                }
                literal if literal.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "path template `{pattern}`: `{{*}}` and `{{**}}` must be whole segments, and a template may not also use `*`"
                    ));
                }
                literal => Segment::Literal(literal.to_string()),
            };
            segments.push(segment);
        }
        Ok(PathMatch::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(segments) => template_matches(segments, path),
        }
    }
}

fn template_matches(segments: &[Segment], path: &str) -> bool {
    let mut parts = path.split('/');
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Many => {
                debug_assert_eq!(i + 1, segments.len());
                // The separator before `{**}` must be there: `/a/{**}`
                // matches `/a/` and `/a/b/c`, not `/a`.
                return parts.next().is_some();
            }
            Segment::One => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(l) => match parts.next() {
                Some(p) if p == l => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

/// Reads an `ipBlocks` value: an address or a CIDR block.
pub fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{value}` is neither an IP address nor a CIDR block"))
}

pub fn ip_in(blocks: &[IpNet], ip: Option<IpAddr>) -> bool {
    // An IPv4 client seen through a dual-stack socket still matches IPv4
    // blocks.
    let ip = ip.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    });
    ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(&ip)))
}

/// Reads a `ports` value (a string in the API).
pub fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{value}` is not a port number (1-65535)"))
}

/// The IP of an `ip:port` or `[v6]:port` address.
pub fn address_ip(address: &str) -> Option<IpAddr> {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    address.parse::<IpAddr>().ok()
}

/// The port of an `ip:port` address, 0 if it has none.
pub fn address_port(address: &str) -> u16 {
    address
        .parse::<std::net::SocketAddr>()
        .map(|sa| sa.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let rows = [
            ("GET", "GET", true),
            ("GET", "GETX", false),
            ("/api/*", "/api/v1", true),
            ("/api/*", "/api", false),
            ("*.svc", "a.svc", true),
            ("*.svc", "a.svcx", false),
            ("*", "x", true),
            ("*", "", false),
            ("", "", true),
        ];
        for (pattern, value, expected) in rows {
            assert_eq!(
                StrMatch::parse(pattern, false).matches(value),
                expected,
                "{pattern:?} vs {value:?}"
            );
        }
    }

    #[test]
    fn templates() {
        let rows = [
            ("/a/{*}/c", "/a/b/c", true),
            ("/a/{*}/c", "/a//c", false),
            ("/a/{*}/c", "/a/b/x/c", false),
            ("/a/{*}", "/a/b", true),
            ("/a/{*}", "/a/b/", false),
            ("/a/{**}", "/a/", true),
            ("/a/{**}", "/a/b/c/d", true),
            ("/a/{**}", "/a", false),
            ("/a/{**}", "/ab/c", false),
            ("/{*}/x/{**}", "/q/x/1/2", true),
            ("/{*}/x/{**}", "/q/y/1/2", false),
        ];
        for (pattern, path, expected) in rows {
            let m = PathMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(path), expected, "{pattern:?} vs {path:?}");
        }
        for bad in ["/a/{**}/b", "/a/x{*}", "/a/{*}/b*", "a/{*}"] {
            assert!(PathMatch::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn ip_blocks() {
        let blocks = vec![
            parse_ip_block("10.0.0.0/8").unwrap(),
            parse_ip_block("192.168.1.7").unwrap(),
            parse_ip_block("fd00::/8").unwrap(),
            parse_ip_block("10.1.2.3/16").unwrap(),
        ];
        assert!(ip_in(&blocks, "10.9.9.9".parse().ok()));
        assert!(ip_in(&blocks, "192.168.1.7".parse().ok()));
        assert!(!ip_in(&blocks, "192.168.1.8".parse().ok()));
        assert!(ip_in(&blocks, "fd12::1".parse().ok()));
        assert!(ip_in(&blocks, "::ffff:10.0.0.1".parse().ok()), "v4-mapped");
        assert!(!ip_in(&blocks, None));
        assert!(parse_ip_block("10.0.0.0/33").is_err());
        assert!(parse_ip_block("nope").is_err());
        assert_eq!(address_ip("[::1]:80"), "::1".parse().ok());
        assert_eq!(address_port("10.0.0.1:8080"), 8080);
        assert!(parse_port("0").is_err() && parse_port("65536").is_err());
    }
}
