//! The Connect RPC protocol (<https://connectrpc.com/docs/protocol>), as envd speaks it.
//!
//! Unary calls carry one bare message (`application/proto` or `application/json`); streaming calls
//! carry envelopes (`application/connect+proto` / `application/connect+json`): a flags byte, a
//! big-endian u32 length, the message. The last envelope of a response stream has flag `0x02` and
//! holds the end-of-stream JSON (`{}` or `{"error":{...}}`).

mod client;
mod codec;
mod envelope;
mod error;
pub mod server;

pub use client::{ConnectClient, ResponseStream, StreamSender};
pub use codec::{Codec, Message};
pub use envelope::{Envelope, EnvelopeDecoder, FLAG_COMPRESSED, FLAG_END_STREAM, encode_envelope};
pub use envelope::{gunzip, gzip};
pub use error::{Code, Error};

/// Largest message envd accepts or a client reads, compressed or not. Larger messages are refused
/// with `resource_exhausted` instead of being buffered.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Header carrying the protocol version; clients send `1`.
pub const PROTOCOL_VERSION_HEADER: &str = "connect-protocol-version";
/// Header carrying the caller's deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "connect-timeout-ms";
/// Compression of each streaming envelope.
pub const STREAM_ENCODING_HEADER: &str = "connect-content-encoding";
/// Compressions the peer accepts for streaming envelopes.
pub const STREAM_ACCEPT_ENCODING_HEADER: &str = "connect-accept-encoding";
