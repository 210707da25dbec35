//! Which authority a request names: one answer, or a 400.
//!
//! A request can name its host twice (the `Host` header and the target's authority: HTTP/2's
//! `:authority`, or an HTTP/1.1 absolute-form target) or send `Host` more than once. Where the
//! copies disagree, a plugin, the router and the upstream could each read a different one, so
//! such requests are refused as RFC 9110 §7.2 / RFC 9112 §3.2 and RFC 9113 §8.3.1 allow and
//! nginx does, before any plugin runs. (RFC 9112 lets an origin server prefer the absolute-form
//! target over a disagreeing `Host`; a proxy that enforces policy refuses instead.)

use http::Version;
use http::header::HOST;
use http::request::Parts;
use http::uri::Authority;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request has {0} Host headers; exactly one is allowed")]
    DuplicateHost(usize),
    #[error("the Host header {0:?} is not `host[:port]`")]
    InvalidHost(String),
    #[error("the Host header `{host}` disagrees with the request target's authority `{authority}`")]
    ConflictingHost { authority: String, host: String },
    #[error("an HTTP/1.1 request must carry a Host header")]
    MissingHost,
}

/// The request's authority: the target's if it has one (checked against `Host`), else the
/// `Host` header's; `None` if it names neither.
pub fn of_request(parts: &Parts) -> Result<Option<String>, Error> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    let extra = hosts.count();
    if extra > 0 {
        return Err(Error::DuplicateHost(extra + 1));
    }
    let host = host
        .map(|v| {
            let text = v.to_str().ok().filter(|t| is_host(t));
            text.map(str::to_owned)
                .ok_or_else(|| Error::InvalidHost(String::from_utf8_lossy(v.as_bytes()).into()))
        })
        .transpose()?;
    let Some(target) = parts.uri.authority() else {
        return Ok(host);
    };
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    match &host {
        Some(h) if !same_authority(target.as_str(), h, scheme) => Err(Error::ConflictingHost {
            authority: target.to_string(),
            host: h.clone(),
        }),
        None if parts.version == Version::HTTP_11 => Err(Error::MissingHost),
        _ => Ok(Some(target.to_string())),
    }
}

/// `uri-host [":" port]` (no userinfo, nothing else).
fn is_host(text: &str) -> bool {
    !text.contains('@') && text.parse::<Authority>().is_ok()
}

/// Same host (case-insensitive) and port, a missing port being the scheme's default.
fn same_authority(a: &str, b: &str, scheme: &str) -> bool {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        match s.strip_suffix(default) {
            Some(bare) => bare.to_owned(),
            None => s,
        }
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn one_authority_or_a_reason() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let ok: &[(Version, &str, &[&str], Option<&str>)] = &[
            (HTTP_11, "/x", &["shop.test"], Some("shop.test")),
            (HTTP_11, "/x", &["Shop.Test:8080"], Some("Shop.Test:8080")),
            (HTTP_11, "/x", &[], None),
            (
                HTTP_11,
                "http://shop.test/x",
                &["shop.test"],
                Some("shop.test"),
            ),
            (
                HTTP_11,
                "http://shop.test:80/x",
                &["SHOP.test"],
                Some("shop.test:80"),
            ),
            (
                HTTP_11,
                "https://shop.test/x",
                &["shop.test:443"],
                Some("shop.test"),
            ),
            (HTTP_10, "http://shop.test/x", &[], Some("shop.test")),
            (HTTP_2, "http://shop.test/x", &[], Some("shop.test")),
            (
                HTTP_2,
                "http://shop.test/x",
                &["shop.test"],
                Some("shop.test"),
            ),
            (HTTP_2, "http://[::1]:80/x", &["[::1]"], Some("[::1]:80")),
            (HTTP_2, "/x", &["shop.test"], Some("shop.test")),
        ];
        for (v, uri, hosts, want) in ok {
            let got = of_request(&parts(*v, uri, hosts))
                .unwrap_or_else(|e| panic!("{v:?} {uri} {hosts:?}: {e}"));
            assert_eq!(got.as_deref(), *want, "{v:?} {uri} {hosts:?}");
        }
        let bad: &[(Version, &str, &[&str], &str)] = &[
            (HTTP_11, "/x", &["a.test", "b.test"], "2 Host headers"),
            (HTTP_11, "/x", &["a.test", "a.test"], "2 Host headers"),
            (
                HTTP_2,
                "http://a.test/x",
                &["a.test", "a.test", "a.test"],
                "3 Host headers",
            ),
            (
                HTTP_11,
                "http://a.test/x",
                &["b.test"],
                "`b.test` disagrees with",
            ),
            (HTTP_11, "http://a.test:8080/x", &["a.test"], "disagrees"),
            (
                HTTP_2,
                "http://a.test/x",
                &["b.test"],
                "disagrees with the request target's authority `a.test`",
            ),
            (HTTP_11, "http://a.test/x", &[], "must carry a Host header"),
            (HTTP_11, "/x", &["a b"], "\"a b\" is not `host[:port]`"),
            (HTTP_11, "/x", &["user@a.test"], "is not `host[:port]`"),
            (HTTP_11, "/x", &["a.test/x"], "is not `host[:port]`"),
        ];
        for (v, uri, hosts, want) in bad {
            let err = of_request(&parts(*v, uri, hosts))
                .expect_err(uri)
                .to_string();
            assert!(
                err.contains(want),
                "{v:?} {uri} {hosts:?}: `{err}` lacks `{want}`"
            );
        }
    }
}
