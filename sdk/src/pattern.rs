//! String patterns in the style of Istio's `AuthorizationPolicy`.

/// Whether `value` matches an Istio-style string pattern.
///
/// | pattern    | matches                                   |
/// |------------|-------------------------------------------|
/// | `*`        | any non-empty value                       |
/// | `prefix*`  | values starting with `prefix`             |
/// | `*suffix`  | values ending with `suffix`               |
/// | `exact`    | exactly `exact`                           |
///
/// A `*` anywhere else is an ordinary character, as in Istio.
///
/// ```
/// use wayplug_sdk::matches_pattern;
///
/// assert!(matches_pattern("/api/*", "/api/v1/items"));
/// assert!(matches_pattern("*.png", "/static/logo.png"));
/// assert!(matches_pattern("/healthz", "/healthz"));
/// assert!(!matches_pattern("/healthz", "/healthz/ready"));
/// assert!(!matches_pattern("*", ""));
/// ```
pub fn matches_pattern(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn table() {
        let cases = [
            ("*", "/", true),
            ("*", "", false),
            ("/api/*", "/api/", true),
            ("/api/*", "/api", false),
            ("/api*", "/apis", true),
            ("*.js", "/a/b.js", true),
            ("*.js", "/a/b.json", false),
            ("/a", "/a", true),
            ("/a", "/A", false),
            ("/a*b", "/a*b", true),
            ("/a*b", "/axb", false),
            ("", "", true),
            ("", "/", false),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(
                matches_pattern(pattern, value),
                expected,
                "pattern {pattern:?} against {value:?}"
            );
        }
    }
}
