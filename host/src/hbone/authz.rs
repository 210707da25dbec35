//! Connection-level authorization: may this peer open a tunnel to this port of this namespace?
//! The rules are the namespace's `authorization` section (see
//! [`crate::config::L4Authorization`] for their meaning).

use crate::config::{L4Authorization, L4Rule};
use crate::exchange::PeerIdentity;

/// Decides a tunnel. `Err` carries the reason, for logs and the refusal.
pub fn check(policy: &L4Authorization, peer: &PeerIdentity, port: u16) -> Result<(), String> {
    let principal = peer.principal();
    let subject = Subject {
        principal: &principal,
        namespace: &peer.namespace,
        port,
    };
    if let Some(i) = policy.deny.iter().position(|r| subject.matches(r)) {
        return Err(format!("matches authorization.deny[{i}]"));
    }
    if !policy.allow.is_empty() && !policy.allow.iter().any(|r| subject.matches(r)) {
        return Err("matches no authorization.allow rule".to_owned());
    }
    Ok(())
}

struct Subject<'a> {
    principal: &'a str,
    namespace: &'a str,
    port: u16,
}

impl Subject<'_> {
    fn matches(&self, rule: &L4Rule) -> bool {
        let strings = |values: &[String], value: &str| values.iter().any(|p| matches(p, value));
        (rule.principals.is_empty() || strings(&rule.principals, self.principal))
            && !strings(&rule.not_principals, self.principal)
            && (rule.namespaces.is_empty() || strings(&rule.namespaces, self.namespace))
            && !strings(&rule.not_namespaces, self.namespace)
            && (rule.ports.is_empty() || rule.ports.contains(&self.port))
            && !rule.not_ports.contains(&self.port)
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` for any non-empty value.
fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ns: &str, sa: &str) -> PeerIdentity {
        PeerIdentity {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    fn policy(yaml: &str) -> L4Authorization {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn string_matching() {
        let cases = [
            ("a", "a", true),
            ("a", "ab", false),
            ("a*", "ab", true),
            ("a*", "a", true),
            ("*b", "ab", true),
            ("*b", "ba", false),
            ("*", "x", true),
            ("*", "", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(matches(pattern, value), want, "{pattern} vs {value}");
        }
    }

    #[test]
    fn decisions() {
        let web = peer("web", "frontend");
        let evil = peer("evil", "mallory");
        let cases: &[(&str, &PeerIdentity, u16, Result<(), &str>)] = &[
            ("{}", &web, 80, Ok(())),
            ("{}", &evil, 80, Ok(())),
            // Deny wins; an absent field matches anything.
            (
                "deny: [ { namespaces: [evil] } ]",
                &evil,
                80,
                Err("deny[0]"),
            ),
            ("deny: [ { namespaces: [evil] } ]", &web, 80, Ok(())),
            // Fields are ANDed.
            (
                "deny: [ { namespaces: [evil], ports: [22] } ]",
                &evil,
                80,
                Ok(()),
            ),
            (
                "deny: [ { namespaces: [evil], ports: [22] } ]",
                &evil,
                22,
                Err("deny[0]"),
            ),
            // With allow rules, one must match.
            (
                "allow: [ { principals: [cluster.local/ns/web/sa/frontend] } ]",
                &web,
                80,
                Ok(()),
            ),
            (
                "allow: [ { principals: [cluster.local/ns/web/sa/frontend] } ]",
                &evil,
                80,
                Err("no authorization.allow"),
            ),
            (
                "allow: [ { principals: ['cluster.local/ns/web/*'] } ]",
                &web,
                80,
                Ok(()),
            ),
            ("allow: [ { ports: [80, 443] } ]", &evil, 443, Ok(())),
            (
                "allow: [ { ports: [80, 443] } ]",
                &evil,
                8080,
                Err("no authorization.allow"),
            ),
            // not* fields exclude.
            (
                "allow: [ { notNamespaces: [evil] } ]",
                &evil,
                80,
                Err("no authorization.allow"),
            ),
            ("allow: [ { notNamespaces: [evil] } ]", &web, 80, Ok(())),
            ("allow: [ { notPorts: [22] } ]", &web, 22, Err("allow")),
            // A deny beats a matching allow.
            (
                "{ allow: [ {} ], deny: [ { notPrincipals: ['*/sa/frontend'] } ] }",
                &evil,
                80,
                Err("deny[0]"),
            ),
            (
                "{ allow: [ {} ], deny: [ { notPrincipals: ['*/sa/frontend'] } ] }",
                &web,
                80,
                Ok(()),
            ),
        ];
        for (yaml, who, port, want) in cases {
            let got = check(&policy(yaml), who, *port);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(reason)) if reason.contains(part) => {}
                _ => panic!("{yaml} for {} port {port}: got {got:?}", who.principal()),
            }
        }
    }
}
