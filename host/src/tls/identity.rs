//! SPIFFE ids as Istio uses them, and reading them out of certificates.
//!
//! Istio identities have exactly one shape, `spiffe://<td>/ns/<namespace>/sa/<service-account>`,
//! so that is the only shape accepted. Characters follow the SPIFFE spec: a trust domain is
//! lowercase `a-z 0-9 . - _`, path segments are `a-z A-Z 0-9 . - _` and never `.` or `..`.
//! Parsing is strict because the parsed parts end up in authorization decisions: two spellings
//! of one identity must not exist.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::Error;

const SCHEME: &str = "spiffe://";
// SPIFFE spec limits: the whole id, and the trust domain on its own.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
///
/// Only valid ids can be constructed; `Display` gives back the canonical URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an id from its parts, validating each.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        let invalid = |reason: String| Error::InvalidSpiffeId {
            input: id.to_string(),
            reason,
        };
        check_trust_domain(trust_domain).map_err(invalid)?;
        check_segment(namespace, "namespace").map_err(invalid)?;
        check_segment(service_account, "service account").map_err(invalid)?;
        if id.to_string().len() > MAX_ID_LEN {
            return Err(invalid(format!("longer than {MAX_ID_LEN} bytes")));
        }
        Ok(id)
    }

    /// Parses `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidSpiffeId {
            input: input.to_owned(),
            reason,
        };
        if input.len() > MAX_ID_LEN {
            return Err(invalid(format!("longer than {MAX_ID_LEN} bytes")));
        }
        let Some(rest) = input.strip_prefix(SCHEME) else {
            let reason = if input
                .get(..SCHEME.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
            {
                "the scheme must be written in lowercase: spiffe://"
            } else {
                "must start with spiffe://"
            };
            return Err(invalid(reason.to_owned()));
        };
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(trust_domain).map_err(invalid)?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                check_segment(namespace, "namespace").map_err(invalid)?;
                check_segment(service_account, "service account").map_err(invalid)?;
                Ok(SpiffeId {
                    trust_domain: trust_domain.to_owned(),
                    namespace: (*namespace).to_owned(),
                    service_account: (*service_account).to_owned(),
                })
            }
            _ => Err(invalid(format!(
                "the path must be /ns/<namespace>/sa/<service-account>, got {:?}",
                &rest[trust_domain.len()..]
            ))),
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// Istio's principal form: the id without `spiffe://`, e.g. `cluster.local/ns/app/sa/web`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        SpiffeId::parse(s)
    }
}

/// Checks a trust domain name on its own (configuration, development CA).
pub(crate) fn validate_trust_domain(trust_domain: &str) -> Result<(), Error> {
    check_trust_domain(trust_domain).map_err(|reason| Error::InvalidTrustDomain {
        input: trust_domain.to_owned(),
        reason,
    })
}

fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("the trust domain is empty".to_owned());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if let Some(c) = td.chars().find(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "the trust domain must be lowercase, found {c:?} in {td:?}"
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "character {c:?} is not allowed in the trust domain {td:?} (allowed: a-z 0-9 . - _)"
        ));
    }
    Ok(())
}

fn check_segment(segment: &str, what: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("the {what} must not be {segment:?}"));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "character {c:?} is not allowed in the {what} {segment:?} (allowed: a-z A-Z 0-9 . - _)"
        ));
    }
    Ok(())
}

/// The verified identity of the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE id from the peer's leaf certificate. `id.to_string()` is what Envoy calls
    /// `connection.uri_san_peer_certificate`.
    pub id: SpiffeId,
    /// When the peer's leaf certificate stops being valid.
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads the identity out of a (leaf) certificate. Does not verify the certificate: use it
    /// on certificates a verifier has already accepted.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, Error> {
        let facts = CertFacts::parse(cert, "peer certificate")?;
        Ok(PeerIdentity {
            id: facts.spiffe_id("peer certificate")?,
            not_after: facts.not_after,
        })
    }

    /// The identity of an established connection's peer (server or client side: both
    /// `ServerConnection` and `ClientConnection` deref to `CommonState`).
    pub fn from_connection(conn: &rustls::CommonState) -> Result<Self, Error> {
        let leaf = conn
            .peer_certificates()
            .and_then(<[_]>::first)
            .ok_or(Error::NoPeerCertificate)?;
        PeerIdentity::from_certificate(leaf)
    }
}

/// The SPIFFE id of an established connection's peer.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, Error> {
    PeerIdentity::from_connection(conn).map(|p| p.id)
}

/// What the TLS layer needs from a certificate, read once.
pub(crate) struct CertFacts {
    /// `spiffe://` URI SANs, as written.
    pub spiffe_uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertFacts {
    /// `what` names the certificate in errors ("leaf certificate in /x/cert-chain.pem").
    pub fn parse(cert: &CertificateDer<'_>, what: &str) -> Result<Self, Error> {
        let parse_error = |reason: String| Error::CertificateParse {
            what: what.to_owned(),
            reason,
        };
        let (_, x509) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| parse_error(e.to_string()))?;
        let san = x509
            .subject_alternative_name()
            .map_err(|e| parse_error(format!("subjectAltName: {e}")))?;
        let spiffe_uris = san
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        // The scheme is compared without case so that `SPIFFE://...` is reported
                        // as a malformed id rather than silently ignored.
                        GeneralName::URI(uri)
                            if uri
                                .get(..SCHEME.len())
                                .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME)) =>
                        {
                            Some((*uri).to_owned())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validity = x509.validity();
        Ok(CertFacts {
            spiffe_uris,
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
        })
    }

    /// The single SPIFFE id this certificate carries.
    pub fn spiffe_id(&self, what: &str) -> Result<SpiffeId, Error> {
        match self.spiffe_uris.as_slice() {
            [] => Err(Error::NoSpiffeId {
                what: what.to_owned(),
            }),
            [uri] => SpiffeId::parse(uri),
            many => Err(Error::MultipleSpiffeIds {
                what: what.to_owned(),
                ids: many.to_vec(),
            }),
        }
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 3339 for operator messages.
pub(crate) fn format_time(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_support::Mesh;

    #[test]
    fn parses_valid_ids() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
                ("cluster.local", "default", "bookinfo-productpage"),
            ),
            ("spiffe://example.org/ns/a/sa/b", ("example.org", "a", "b")),
            (
                "spiffe://td_1-x.y/ns/Mixed.Case_ns/sa/sa.with.dots",
                ("td_1-x.y", "Mixed.Case_ns", "sa.with.dots"),
            ),
            ("spiffe://123/ns/0/sa/9", ("123", "0", "9")),
        ];
        for (input, (td, ns, sa)) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain(), td, "{input}");
            assert_eq!(id.namespace(), ns, "{input}");
            assert_eq!(id.service_account(), sa, "{input}");
            assert_eq!(id.to_string(), input, "round trip");
            assert_eq!(input.parse::<SpiffeId>().expect("FromStr"), id);
            assert_eq!(SpiffeId::new(td, ns, sa).expect("new"), id);
        }
    }

    #[test]
    fn rejects_invalid_ids_with_a_reason() {
        let cases = [
            ("", "must start with spiffe://"),
            ("cluster.local/ns/a/sa/b", "must start with spiffe://"),
            (
                "https://cluster.local/ns/a/sa/b",
                "must start with spiffe://",
            ),
            ("SPIFFE://cluster.local/ns/a/sa/b", "lowercase: spiffe://"),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                "trust domain must be lowercase",
            ),
            ("spiffe://cluster.local:8080/ns/a/sa/b", "character ':'"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "character '@'"),
            (
                "spiffe://cluster.local",
                "path must be /ns/<namespace>/sa/<service-account>",
            ),
            ("spiffe://cluster.local/", "path must be"),
            ("spiffe://cluster.local/ns/a", "path must be"),
            ("spiffe://cluster.local/ns/a/sa", "path must be"),
            ("spiffe://cluster.local/ns/a/sa/b/", "path must be"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "path must be"),
            ("spiffe://cluster.local/sa/b/ns/a", "path must be"),
            ("spiffe://cluster.local//ns/a/sa/b", "path must be"),
            ("spiffe://cluster.local/ns//sa/b", "the namespace is empty"),
            (
                "spiffe://cluster.local/ns/a/sa/",
                "the service account is empty",
            ),
            (
                "spiffe://cluster.local/ns/../sa/b",
                "namespace must not be \"..\"",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/.",
                "service account must not be \".\"",
            ),
            ("spiffe://cluster.local/ns/a b/sa/b", "character ' '"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "character '?'"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "character '#'"),
            ("spiffe://cluster.local/ns/a%2F/sa/b", "character '%'"),
            ("spiffe://cluster.local/ns/ä/sa/b", "character 'ä'"),
        ];
        for (input, want) in cases {
            let err = SpiffeId::parse(input).expect_err(input).to_string();
            assert!(
                err.contains(want),
                "{input:?}: error {err:?} should mention {want:?}"
            );
            assert!(err.contains("invalid SPIFFE id"), "{err}");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "n".repeat(MAX_ID_LEN));
        assert!(
            SpiffeId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 2048")
        );
        let long_td = format!("spiffe://{}/ns/a/sa/b", "t".repeat(256));
        assert!(
            SpiffeId::parse(&long_td)
                .unwrap_err()
                .to_string()
                .contains("trust domain is longer than 255")
        );
    }

    #[test]
    fn new_validates_parts() {
        let cases = [
            ("", "a", "b", "trust domain is empty"),
            ("td", "", "b", "namespace is empty"),
            ("td", "a", "b/c", "character '/'"),
            ("TD", "a", "b", "lowercase"),
        ];
        for (td, ns, sa, want) in cases {
            let err = SpiffeId::new(td, ns, sa).unwrap_err().to_string();
            assert!(err.contains(want), "{td}/{ns}/{sa}: {err}");
        }
    }

    #[test]
    fn principal_drops_the_scheme() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        assert_eq!(id.principal(), "cluster.local/ns/app/sa/web");
    }

    #[test]
    fn trust_domain_validation() {
        for ok in ["cluster.local", "a", "x_y-z.0"] {
            validate_trust_domain(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, want) in [
            ("", "empty"),
            ("Cluster.local", "lowercase"),
            ("td/ns", "character '/'"),
            ("td:1", "character ':'"),
        ] {
            let err = validate_trust_domain(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid trust domain"), "{err}");
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn peer_identity_from_issued_certificate() {
        let mesh = Mesh::new();
        let issued = mesh
            .ca
            .issue("bookinfo", "reviews", Duration::from_secs(3600))
            .unwrap();
        let leaf = issued.leaf_der();
        let peer = PeerIdentity::from_certificate(&leaf).unwrap();
        assert_eq!(
            peer.id.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
        let remaining = peer.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(remaining <= Duration::from_secs(3600) && remaining > Duration::from_secs(3500));
    }

    #[test]
    fn certificates_with_zero_or_several_or_bad_spiffe_ids_are_rejected() {
        let mesh = Mesh::new();
        let one_hour = Duration::from_secs(3600);
        let cases: [(&[&str], &str); 4] = [
            (&[], "has no spiffe:// URI SAN"),
            (&["https://example.com/x"], "has no spiffe:// URI SAN"),
            (
                &[
                    "spiffe://cluster.local/ns/a/sa/b",
                    "spiffe://cluster.local/ns/c/sa/d",
                ],
                "has 2 spiffe:// URI SANs",
            ),
            (&["SPIFFE://cluster.local/ns/a/sa/b"], "lowercase"),
        ];
        for (uris, want) in cases {
            let issued = mesh
                .ca
                .issue_with_uris(uris, SystemTime::now(), one_hour)
                .unwrap();
            let err = PeerIdentity::from_certificate(&issued.leaf_der()).unwrap_err();
            assert!(err.to_string().contains(want), "{uris:?}: {err}");
        }
        // Other URI SANs next to the SPIFFE one are fine.
        let issued = mesh
            .ca
            .issue_with_uris(
                &["https://example.com/x", "spiffe://cluster.local/ns/a/sa/b"],
                SystemTime::now(),
                one_hour,
            )
            .unwrap();
        let peer = PeerIdentity::from_certificate(&issued.leaf_der()).unwrap();
        assert_eq!(peer.id.principal(), "cluster.local/ns/a/sa/b");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err = PeerIdentity::from_certificate(&CertificateDer::from(vec![1, 2, 3])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("peer certificate is not a valid X.509 certificate"),
            "{err}"
        );
    }
}
