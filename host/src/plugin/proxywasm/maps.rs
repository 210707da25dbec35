//! The Proxy-Wasm map encoding: a u32 pair count, then a (u32 key length,
//! u32 value length) per pair, then every key and value each followed by a
//! NUL byte. All integers little-endian.

/// Serializes pairs. An empty map is empty bytes: the caller sends it to the
/// guest as a null pointer and zero length, because the Rust SDK mis-parses a
/// non-empty encoding of zero pairs.
pub fn encode<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    I::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    let count = pairs.clone().count();
    if count == 0 {
        return Vec::new();
    }
    let data_len: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + count * 8 + data_len);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decoded pairs, keys and values as the guest sent them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a map from a guest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    Malformed,
    TooManyPairs,
    TooManyBytes,
}

/// Parses the encoding of at most `max_pairs` pairs whose keys and values
/// add up to at most `max_bytes`, checking both before copying anything.
pub fn decode_bounded(bytes: &[u8], max_pairs: usize, max_bytes: usize) -> Result<Pairs, MapError> {
    if bytes.len() >= 4 {
        let count = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if count > max_pairs {
            return Err(MapError::TooManyPairs);
        }
        // Past the sizes table, everything is key and value bytes plus one
        // NUL after each.
        let payload = bytes.len().saturating_sub(4 + count * 8 + count * 2);
        if payload > max_bytes {
            return Err(MapError::TooManyBytes);
        }
    }
    decode(bytes).ok_or(MapError::Malformed)
}

/// Parses the encoding; `None` when the bytes are not a well-formed map.
pub fn decode(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = read_u32(0)?;
    // Each pair needs at least 8 bytes of sizes and 2 terminators.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut take = |len: usize| -> Option<Vec<u8>> {
        let v = bytes.get(at..at.checked_add(len)?)?.to_vec();
        if *bytes.get(at + len)? != 0 {
            return None;
        }
        at += len + 1;
        Some(v)
    };
    let mut out = Vec::with_capacity(count);
    for (klen, vlen) in sizes {
        let k = take(klen)?;
        let v = take(vlen)?;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_map_is_empty_bytes() {
        assert!(encode(std::iter::empty::<(&[u8], &[u8])>()).is_empty());
        assert_eq!(decode(&[]), Some(vec![]));
    }

    #[test]
    fn layout_matches_the_spec() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"bc"), (b":path", b"/")];
        let bytes = encode(pairs.iter().copied());
        let mut want = vec![2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0];
        want.extend_from_slice(b"a\0bc\0:path\0/\0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn round_trips() {
        let cases: Vec<Vec<(&[u8], &[u8])>> = vec![
            vec![(b"k", b"")],
            vec![(b"", b"v")],
            vec![
                (b"x-a", b"1"),
                (b"x-a", b"2"),
                (b"bin", &[0xff, 0x00, 0x01]),
            ],
        ];
        for pairs in cases {
            let back = decode(&encode(pairs.iter().copied())).unwrap();
            let back: Vec<(&[u8], &[u8])> = back
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            assert_eq!(back, pairs);
        }
    }

    #[test]
    fn rejects_malformed() {
        let good = encode([(&b"key"[..], &b"value"[..])]);
        for cut in 1..good.len() {
            assert_eq!(decode(&good[..cut]), None, "truncated at {cut}");
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(decode(&no_nul), None);
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn pairs() -> impl Strategy<Value = Pairs> {
        vec((vec(any::<u8>(), 0..24), vec(any::<u8>(), 0..48)), 0..12)
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(pairs in pairs()) {
            let bytes = encode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            prop_assert_eq!(decode(&bytes), Some(pairs.clone()));
            let keys_and_values: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            prop_assert_eq!(
                decode_bounded(&bytes, pairs.len(), keys_and_values),
                Ok(pairs.clone())
            );
            if !pairs.is_empty() {
                prop_assert_eq!(
                    decode_bounded(&bytes, pairs.len() - 1, usize::MAX),
                    Err(MapError::TooManyPairs)
                );
            }
            if keys_and_values > 0 {
                prop_assert_eq!(
                    decode_bounded(&bytes, usize::MAX, keys_and_values - 1),
                    Err(MapError::TooManyBytes)
                );
            }
        }

        #[test]
        fn decode_never_panics_and_what_it_accepts_re_encodes(bytes in vec(any::<u8>(), 0..256)) {
            if let Some(pairs) = decode(&bytes) {
                let again = encode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                prop_assert_eq!(decode(&again), Some(pairs));
            }
        }
    }
}
