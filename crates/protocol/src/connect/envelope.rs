//! Connect streaming envelopes: `[flags u8][length u32 BE][payload]`.

use super::{Error, MAX_MESSAGE_BYTES};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::{Read, Write};

/// The payload is gzip-compressed (per `connect-content-encoding`).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The envelope ends a response stream and carries the end-of-stream JSON.
pub const FLAG_END_STREAM: u8 = 0x02;

/// One decoded envelope, payload already decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub data: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Frames `data` as one envelope.
pub fn encode_envelope(flags: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + data.len());
    out.put_u8(flags);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// Gzip-compresses a payload (for peers that asked for it).
pub fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Decompresses a gzip payload, refusing output beyond [`MAX_MESSAGE_BYTES`] (a zip bomb is
/// `resource_exhausted`, not an out-of-memory).
pub fn gunzip(data: &[u8]) -> Result<Bytes, Error> {
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(data).take(MAX_MESSAGE_BYTES as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| Error::invalid_argument(format!("malformed gzip payload: {e}")))?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(Error::resource_exhausted(
            "decompressed message exceeds the size limit",
        ));
    }
    Ok(Bytes::from(out))
}

/// Incremental decoder: feed it body chunks as they arrive, take whole envelopes out.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    gzip: bool,
}

impl EnvelopeDecoder {
    /// `gzip`: whether compressed envelopes use gzip (the only compression envd speaks).
    pub fn new(gzip: bool) -> Self {
        Self {
            buf: BytesMut::new(),
            gzip,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered but not yet part of a whole envelope.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole envelope, `Ok(None)` when more bytes are needed.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, Error> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(Error::resource_exhausted(format!(
                "message of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
            )));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let data = self.buf.split_to(len).freeze();
        let data = if flags & FLAG_COMPRESSED != 0 {
            if !self.gzip {
                return Err(Error::invalid_argument(
                    "compressed envelope without a connect-content-encoding",
                ));
            }
            gunzip(&data)?
        } else {
            data
        };
        Ok(Some(Envelope { flags, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_across_chunks() {
        let a = encode_envelope(0, b"hello");
        let b = encode_envelope(FLAG_END_STREAM, b"{}");
        let all = [a.as_ref(), b.as_ref()].concat();
        let mut d = EnvelopeDecoder::new(false);
        let mut got = Vec::new();
        for byte in all {
            d.push(&[byte]);
            while let Ok(Some(e)) = d.next_envelope() {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data.as_ref(), b"hello");
        assert!(got[1].is_end_stream());
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut d = EnvelopeDecoder::new(false);
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        let err = d.next_envelope().err();
        assert_eq!(
            err.map(|e| e.code),
            Some(super::super::Code::ResourceExhausted)
        );
    }

    #[test]
    fn gzip_round_trip() {
        let payload = vec![7u8; 100_000];
        let env = encode_envelope(FLAG_COMPRESSED, &gzip(&payload));
        let mut d = EnvelopeDecoder::new(true);
        d.push(&env);
        let got = d.next_envelope().ok().flatten().map(|e| e.data);
        assert_eq!(got.as_deref(), Some(payload.as_slice()));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever it yields is bounded.
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut d = EnvelopeDecoder::new(true);
            for c in chunks {
                d.push(&c);
                while let Ok(Some(e)) = d.next_envelope() {
                    prop_assert!(e.data.len() <= MAX_MESSAGE_BYTES);
                }
            }
        }

        /// Every framed payload decodes back to itself.
        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..8)) {
            let mut d = EnvelopeDecoder::new(false);
            for p in &payloads {
                d.push(&encode_envelope(0, p));
            }
            for p in &payloads {
                let e = d.next_envelope();
                prop_assert_eq!(e.ok().flatten().map(|e| e.data.to_vec()), Some(p.clone()));
            }
        }
    }
}
