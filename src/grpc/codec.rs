//! The wire codec of every service: prost's, except for what a request that
//! does not decode is. prost calls it INTERNAL, as if the issuer had failed;
//! here it is the caller's mistake, `INVALID_ARGUMENT`, and the message names
//! the message and field that did not decode (prost's own description, never
//! its Debug text).

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with request decoding errors as `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

/// prost's decoder, its failures reworded as the caller's.
#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| invalid(s.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `prost`'s text is "failed to decode Protobuf message: Msg.field: why".
fn invalid(prost_text: &str) -> Status {
    let detail = prost_text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(prost_text);
    Status::invalid_argument(format!(
        "the message is not valid protobuf for this method: {detail}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_failure_names_the_field_without_the_prefix() {
        let err = <crate::grpc::pb::MintJwtRequest as prost::Message>::decode(
            &[0x12, 0x02, 0xff, 0xfe][..],
        )
        .unwrap_err();
        let s = invalid(Status::internal(err.to_string()).message());
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().starts_with("the message is not valid protobuf"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("MintJwtRequest."), "{}", s.message());
        assert!(!s.message().contains("DecodeError"), "{}", s.message());
    }
}
