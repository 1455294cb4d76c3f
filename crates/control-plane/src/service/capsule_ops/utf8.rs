//! Process output as text for the exec and process streams, whose frames carry strings: a
//! multi-byte character cut in two by the chunking must not become two replacement characters.

/// Decodes a byte stream chunk by chunk. An incomplete UTF-8 sequence at the end of a chunk is
/// kept for the next one; invalid bytes become U+FFFD, as in `String::from_utf8_lossy`.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    /// The start of a character whose remaining bytes have not arrived (at most 3 bytes).
    tail: Vec<u8>,
}

impl Utf8Chunker {
    /// The text of `bytes` (after any tail kept from before), minus an incomplete final
    /// character, which is kept. May be empty.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.tail);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // from_utf8 vouched for `valid`.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // The input ends inside a character that may still complete.
                        None => {
                            self.tail = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// The end of the stream: a kept incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let tail = std::mem::take(&mut self.tail);
        String::from_utf8_lossy(&tail).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every possible pair of points and checks the text is the same as
    /// decoding the whole at once.
    fn check_all_splits(bytes: &[u8]) {
        let whole = String::from_utf8_lossy(bytes).into_owned();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut c = Utf8Chunker::default();
                let mut text = c.push(&bytes[..i]);
                text += &c.push(&bytes[i..j]);
                text += &c.push(&bytes[j..]);
                text += &c.finish();
                assert_eq!(text, whole, "split at {i},{j} of {bytes:?}");
            }
        }
    }

    #[test]
    fn never_splits_a_character_across_chunks() {
        check_all_splits("héllo → wörld 🦀!".as_bytes());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_wherever_the_chunks_end() {
        check_all_splits(b"ok \xff\xfe mid \xe2\x82 end \xf0\x9f\xa6");
        check_all_splits(b"\xc3");
    }

    #[test]
    fn keeps_an_incomplete_character_until_it_completes() {
        let mut c = Utf8Chunker::default();
        let crab = "🦀".as_bytes();
        assert_eq!(c.push(&crab[..1]), "");
        assert_eq!(c.push(&crab[1..3]), "");
        assert_eq!(c.push(&crab[3..]), "🦀");
        assert_eq!(c.finish(), "");
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_lossy() {
        let mut c = Utf8Chunker::default();
        assert_eq!(c.push(b"a\xe2\x82"), "a");
        assert_eq!(c.finish(), "\u{fffd}");
        assert_eq!(c.finish(), "");
    }
}
