//! The two message codecs: binary protobuf and proto3 JSON.

use super::{Error, MAX_MESSAGE_BYTES};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

/// What every RPC message is: a prost message with proto3-JSON serde impls.
pub trait Message:
    prost::Message + Default + Serialize + DeserializeOwned + Send + 'static
{
}
impl<T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// How messages are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// Reads the codec from a Content-Type, and whether the call is streaming. Unknown types give
    /// `None` (the server answers 415).
    pub fn from_content_type(content_type: &str) -> Option<(Codec, bool)> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/proto" | "application/protobuf" => Some((Codec::Proto, false)),
            "application/json" => Some((Codec::Json, false)),
            "application/connect+proto" => Some((Codec::Proto, true)),
            "application/connect+json" => Some((Codec::Json, true)),
            _ => None,
        }
    }

    /// The Content-Type of a unary (`streaming == false`) or streaming call.
    pub fn content_type(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, false) => "application/json",
            (Codec::Proto, true) => "application/connect+proto",
            (Codec::Json, true) => "application/connect+json",
        }
    }

    pub fn encode<M: Message>(self, msg: &M) -> Bytes {
        match self {
            Codec::Proto => Bytes::from(msg.encode_to_vec()),
            // Serialising a generated message cannot fail: every field maps to JSON.
            Codec::Json => Bytes::from(serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec())),
        }
    }

    /// Decodes one message; malformed input is `invalid_argument` with what was wrong.
    pub fn decode<M: Message>(self, data: &[u8]) -> Result<M, Error> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(Error::resource_exhausted(format!(
                "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES}",
                data.len()
            )));
        }
        match self {
            Codec::Proto => M::decode(data)
                .map_err(|e| Error::invalid_argument(format!("malformed protobuf message: {e}"))),
            // An empty unary JSON body is the empty message, as connect-go treats it.
            Codec::Json if data.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
            Codec::Json => serde_json::from_slice(data)
                .map_err(|e| Error::invalid_argument(format!("malformed JSON message: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envd::process::{ProcessSelector, SendSignalRequest, Signal, process_selector};

    #[test]
    fn content_types() {
        assert_eq!(
            Codec::from_content_type("application/json; charset=utf-8"),
            Some((Codec::Json, false))
        );
        assert_eq!(
            Codec::from_content_type("application/connect+proto"),
            Some((Codec::Proto, true))
        );
        assert_eq!(Codec::from_content_type("text/plain"), None);
    }

    #[test]
    fn json_follows_proto3_mapping() {
        let req = SendSignalRequest {
            process: Some(ProcessSelector {
                selector: Some(process_selector::Selector::Pid(42)),
            }),
            signal: Signal::Sigkill as i32,
        };
        let json = Codec::Json.encode(&req);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        assert_eq!(v["process"]["pid"], 42);
        assert_eq!(v["signal"], "SIGNAL_SIGKILL");
        let back: SendSignalRequest = Codec::Json.decode(&json).unwrap_or_default();
        assert_eq!(back, req);
        let proto = Codec::Proto.encode(&req);
        assert_eq!(
            Codec::Proto.decode::<SendSignalRequest>(&proto).ok(),
            Some(req)
        );
    }

    #[test]
    fn malformed_input_is_invalid_argument() {
        let err = Codec::Json
            .decode::<SendSignalRequest>(b"{\"process\":")
            .err();
        assert_eq!(
            err.map(|e| e.code),
            Some(super::super::Code::InvalidArgument)
        );
        let err = Codec::Proto
            .decode::<SendSignalRequest>(&[0xff, 0xff])
            .err();
        assert_eq!(
            err.map(|e| e.code),
            Some(super::super::Code::InvalidArgument)
        );
    }

    mod decoders {
        use super::super::*;
        use crate::envd::{filesystem, process};
        use proptest::prelude::*;

        fn decode_all(codec: Codec, data: &[u8]) {
            let _ = codec.decode::<process::StartRequest>(data);
            let _ = codec.decode::<process::SendInputRequest>(data);
            let _ = codec.decode::<process::StreamInputRequest>(data);
            let _ = codec.decode::<process::UpdateRequest>(data);
            let _ = codec.decode::<filesystem::ListDirRequest>(data);
            let _ = codec.decode::<filesystem::MoveRequest>(data);
            let _ = codec.decode::<filesystem::WatchDirRequest>(data);
        }

        proptest! {
            /// No byte string makes a request decoder panic, in either codec.
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                decode_all(Codec::Proto, &data);
                decode_all(Codec::Json, &data);
            }

            /// JSON-shaped garbage (the likelier malformed input) never panics either.
            #[test]
            fn json_like_text_never_panics(text in r#"\{("[a-z]{1,8}":(-?[0-9]{1,12}|"[A-Za-z0-9=_ ]{0,12}"|\[\]|\{\}|null|true),?){0,6}\}"#) {
                decode_all(Codec::Json, text.as_bytes());
            }

            /// Every message survives both codecs unchanged.
            #[test]
            fn start_requests_round_trip(cmd in "[ -~]{0,32}", args in proptest::collection::vec("[ -~]{0,16}", 0..4), tag in proptest::option::of("[a-z0-9-]{1,12}"), stdin in proptest::option::of(any::<bool>())) {
                let req = process::StartRequest {
                    process: Some(process::ProcessConfig { cmd, args, envs: Default::default(), cwd: None }),
                    pty: None,
                    tag,
                    stdin,
                };
                for codec in [Codec::Proto, Codec::Json] {
                    let back: process::StartRequest = codec.decode(&codec.encode(&req)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&back, &req);
                }
            }
        }
    }
}
