//! The protobuf codec of every service and client: prost's, except for what
//! a message that does not decode becomes. tonic's default answers INTERNAL
//! with prost's text; a request that does not decode is the caller's mistake,
//! so it is INVALID_ARGUMENT naming the message and the field prost stopped
//! at (a response that does not decode stays INTERNAL: that is the server's).

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// [`ProstCodec`] with request decode errors mapped by [`decode_error`].
#[derive(Debug, Clone)]
pub struct TaskmintCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for TaskmintCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for TaskmintCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TaskmintDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        TaskmintDecoder(PhantomData)
    }
}

/// Decodes `U` with prost; see [`decode_error`].
#[derive(Debug, Clone)]
pub struct TaskmintDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for TaskmintDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_error(message_name::<U>(), &e))
    }
}

/// The unqualified name of a generated message type (`MintJwtRequest`).
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The status for a message that does not decode. Requests (every request
/// message is named `…Request`) are INVALID_ARGUMENT; anything else is
/// INTERNAL. The text is prost's description of where and why decoding
/// stopped (`MintJwtRequest.task_id: invalid string value: …`), without its
/// generic prefix.
pub(crate) fn decode_error(message: &str, e: &prost::DecodeError) -> Status {
    let text = e.to_string();
    let detail = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let m = format!("`{message}` does not decode as protobuf: {detail}");
    if message.ends_with("Request") {
        Status::invalid_argument(m)
    } else {
        Status::internal(m)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tonic::Code;

    use super::*;
    use crate::grpc::pb;

    /// A request whose task id is not UTF-8 is the caller's mistake, named
    /// by message and field.
    #[test]
    fn a_request_that_does_not_decode_is_an_invalid_argument_naming_the_field() {
        // Field 1 (task_id), length-delimited, two bytes that are not UTF-8.
        let bad = [0x0a, 0x02, 0xff, 0xfe];
        let e = pb::MintJwtRequest::decode(&bad[..]).unwrap_err();
        let s = decode_error(message_name::<pb::MintJwtRequest>(), &e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("`MintJwtRequest` does not decode as protobuf: "),
            "{}",
            s.message()
        );
        assert!(s.message().contains("task_id"), "{}", s.message());
        // Truncated input.
        let e = pb::BeginTaskRequest::decode(&[0x0a, 0x10, b'a'][..]).unwrap_err();
        let s = decode_error(message_name::<pb::BeginTaskRequest>(), &e);
        assert_eq!(s.code(), Code::InvalidArgument);
        // A response that does not decode is the server's fault.
        let e = pb::Task::decode(&bad[..]).unwrap_err();
        assert_eq!(
            decode_error(message_name::<pb::Task>(), &e).code(),
            Code::Internal
        );
    }
}
