//! Path normalization before matching, as Istio's `pathNormalization`
//! options define it (istio.io "Authorization Policy Normalization"):
//!
//! - `BASE` (Istio's default): `%00` is refused with 400; percent-escapes of
//!   unreserved characters (letters, digits, `-`, `.`, `_`, `~`) are decoded
//!   once; other escapes are kept (hex upper-cased); `\` becomes `/`; `.`
//!   and `..` segments are resolved (RFC 3986, section 5.2.4). Encoded
//!   slashes (`%2F`, `%5C`) are kept, as Envoy's default does.
//! - `MERGE_SLASHES`: then runs of `/` are merged.
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` are decoded first.
//!
//! Hand-written: the rules are Envoy's particular mix (unreserved-only
//! decoding, backslashes, the `%00` refusal), which general URL crates do
//! not offer as one step.

use serde::Deserialize;

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

/// Why a path is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes `path` (without its query) for matching.
pub fn normalize(path: &str, mode: Normalization) -> Result<String, PathError> {
    let decoded = decode(path.as_bytes(), mode)?;
    let slashed: Vec<u8> = decoded
        .into_iter()
        .map(|b| if b == b'\\' { b'/' } else { b })
        .collect();
    // Decoding only ever turns `%XX` of ASCII into ASCII, so the bytes stay
    // valid UTF-8.
    let text = String::from_utf8_lossy(&slashed);
    let mut resolved = remove_dot_segments(&text);
    if mode != Normalization::Base {
        resolved = merge_slashes(&resolved);
    }
    Ok(resolved)
}

fn decode(bytes: &[u8], mode: Normalization) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if c == 0 {
                    return Err(PathError::EncodedNul);
                }
                let slash = c == b'/' || c == b'\\';
                if unreserved(c) || (slash && mode == Normalization::DecodeAndMergeSlashes) {
                    out.push(c);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4, on an absolute path; `..` never climbs above
/// the root.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let mut segments = path.split('/').peekable();
    // A path starts with `/`, so the first piece is empty.
    let absolute = path.starts_with('/');
    if absolute {
        segments.next();
    }
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                output.pop();
                trailing_slash = last;
            }
            s => {
                output.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    if absolute {
        out.push('/');
    }
    out.push_str(&output.join("/"));
    if trailing_slash && !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_normalization_table() {
        use Normalization::*;
        let rows: &[(&str, Normalization, Result<&str, PathError>)] = &[
            ("/a/b", Base, Ok("/a/b")),
            ("/a/../b", Base, Ok("/b")),
            ("/a/./b", Base, Ok("/a/b")),
            ("/a/b/..", Base, Ok("/a/")),
            ("/a/b/.", Base, Ok("/a/b/")),
            ("/../../x", Base, Ok("/x")),
            ("/%2e%2e/admin", Base, Ok("/admin")),
            ("/a/%2E%2E/b", Base, Ok("/b")),
            ("/%61dmin", Base, Ok("/admin")),
            ("/x%2Dy%5fz%7E", Base, Ok("/x-y_z~")),
            ("\\admin", Base, Ok("/admin")),
            ("/a\\..\\b", Base, Ok("/b")),
            ("/a//b", Base, Ok("/a//b")),
            ("/a//b", MergeSlashes, Ok("/a/b")),
            ("/a%2fb", Base, Ok("/a%2Fb")),
            ("/a%2fb", MergeSlashes, Ok("/a%2Fb")),
            ("/a%2fb", DecodeAndMergeSlashes, Ok("/a/b")),
            ("/a%5c..%5cb", DecodeAndMergeSlashes, Ok("/b")),
            ("/a%2f%2fb", DecodeAndMergeSlashes, Ok("/a/b")),
            ("/a%00b", Base, Err(PathError::EncodedNul)),
            ("/a%20b", Base, Ok("/a%20b")),
            ("/a%zzb", Base, Ok("/a%zzb")),
            ("/a%", Base, Ok("/a%")),
            ("/a%4", Base, Ok("/a%4")),
            ("/", Base, Ok("/")),
            ("/é", Base, Ok("/é")),
        ];
        for (path, mode, expected) in rows {
            let expected = expected.clone().map(str::to_string);
            assert_eq!(normalize(path, *mode), expected, "{path:?} with {mode:?}");
        }
    }
}
