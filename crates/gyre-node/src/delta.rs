//! Fossil delta compression for delta-negotiated subscriptions.
//!
//! The `fossil-delta` crate produces the Fossil SCM format that centrifuge-js
//! and centrifuge-python decode. A patch is only used when it is smaller than
//! the payload and, for JSON clients, valid UTF-8: JSON carries the patch as a
//! string, and a literal run that splits a multi-byte character would not
//! survive the client's string round trip (the full payload is sent instead).

use bytes::Bytes;

/// A patch turning `source` into `target`, or `None` when sending `target`
/// in full is as small or the patch could not travel as a JSON string.
pub fn patch(source: &[u8], target: &[u8], json: bool) -> Option<Bytes> {
    // The crate's argument order is (target, source).
    let d = fossil_delta::delta(target, source);
    if d.len() >= target.len() {
        return None;
    }
    if json && std::str::from_utf8(&d).is_err() {
        return None;
    }
    Some(Bytes::from(d))
}

/// Applies a patch (tests and tooling: the load generator, recovery tests).
///
/// Written here rather than calling `fossil_delta::apply`, which trusts the
/// patch: it indexes past the end of a short or truncated patch, preallocates
/// whatever output size the header claims, and accepts a patch without its
/// checksum. Every malformed patch is `None` here (found by the
/// `fossil_delta` fuzz target, see docs/fuzzing.md). Output never exceeds
/// the size the header declares, and allocation up front never exceeds the
/// inputs' size.
pub fn apply(source: &[u8], patch: &[u8]) -> Option<Vec<u8>> {
    let mut p = Reader(patch);
    let total = p.int()?;
    p.expect(b'\n')?;
    let mut out = Vec::with_capacity(total.min(source.len().saturating_add(patch.len())));
    loop {
        let cnt = p.int()?;
        match p.byte()? {
            b'@' => {
                let offset = p.int()?;
                p.expect(b',')?;
                let end = offset.checked_add(cnt)?;
                if out.len().checked_add(cnt)? > total {
                    return None;
                }
                out.extend_from_slice(source.get(offset..end)?);
            }
            b':' => {
                if out.len().checked_add(cnt)? > total {
                    return None;
                }
                out.extend_from_slice(p.take(cnt)?);
            }
            b';' => {
                let ok = out.len() == total && u64::from(checksum(&out)) == cnt as u64 && p.0.is_empty();
                return ok.then_some(out);
            }
            _ => return None,
        }
    }
}

/// Cursor over a patch; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.byte()? == want).then_some(())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// Fossil's base-64 integer (`0-9A-Z_a-z~`); at least one digit, and
    /// `None` on overflow instead of wrapping.
    fn int(&mut self) -> Option<usize> {
        let mut v: usize = 0;
        let mut digits = 0;
        while let Some(d) = self.0.first().and_then(|b| b64_digit(*b)) {
            v = v.checked_mul(64)?.checked_add(usize::from(d))?;
            self.0 = &self.0[1..];
            digits += 1;
        }
        (digits > 0).then_some(v)
    }
}

fn b64_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'Z' => Some(b - b'A' + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some(b - b'a' + 37),
        b'~' => Some(63),
        _ => None,
    }
}

/// Fossil's checksum: the sum of big-endian 32-bit words, the final partial
/// word's bytes in the high positions (what the patch's `;` carries).
fn checksum(data: &[u8]) -> u32 {
    let words = data.chunks_exact(4);
    let mut tail = [0u8; 4];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    words.fold(u32::from_be_bytes(tail), |s, w| s.wrapping_add(u32::from_be_bytes(w.try_into().expect("chunks of 4"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_patches_are_none() {
        let src = b"hello world";
        let good = fossil_delta::delta(b"hello brave world", src);
        assert_eq!(apply(src, &good).as_deref(), Some(&b"hello brave world"[..]));
        for bad in [
            &b""[..],                    // no header
            b"5",                        // header without newline
            b"5\n",                      // no commands
            b"5\n5:hel",                 // literal past the end
            b"5\n5@0,",                  // no terminator
            b"5\nZ@0,0;",                // copy past the source
            b"5\n5@0",                   // copy without its comma
            b"3\n5:hello0;",             // output past the declared size
            b"~~~~~~~~~~~~~~~~~~~~~~\n", // size that overflows
            b"5\n5:hello0;",             // wrong checksum
            b"5\n2:he3@2,0;",            // right size, wrong checksum
        ] {
            assert_eq!(apply(src, bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Wrong checksum and trailing bytes after `;` are refused too.
        let mut trailing = good.clone();
        trailing.push(b'x');
        assert_eq!(apply(src, &trailing), None);
        // Agrees with the crate on well-formed patches, including empty ones.
        let empty = fossil_delta::delta(b"", src);
        assert_eq!(apply(src, &empty).as_deref(), Some(&b""[..]));
    }

    proptest! {
        #[test]
        fn apply_of_delta_is_the_target(a in proptest::collection::vec(any::<u8>(), 0..2000),
                                        b in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let d = fossil_delta::delta(&b, &a);
            prop_assert_eq!(apply(&a, &d).unwrap(), b);
        }

        #[test]
        fn similar_json_documents_compress(n in 0u32..1000, s in "[a-z]{0,40}") {
            let a = format!(r#"{{"counter":{n},"text":"{s}","padding":"{}"}}"#, "x".repeat(200));
            let b = format!(r#"{{"counter":{},"text":"{s}","padding":"{}"}}"#, n + 1, "x".repeat(200));
            let p = patch(a.as_bytes(), b.as_bytes(), true).expect("a small change compresses");
            prop_assert!(p.len() < b.len());
            prop_assert_eq!(apply(a.as_bytes(), &p).unwrap(), b.into_bytes());
        }
    }
}
