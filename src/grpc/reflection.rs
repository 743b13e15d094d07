//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, which older
//! grpcurl releases still use) for the three taskmint services and health,
//! answered from the descriptor set `build.rs` wrote while compiling
//! `proto/`.
//!
//! Reflection sits behind the guard like every other service: a caller needs
//! a valid SVID, and its calls take tokens from the `read` bucket. No policy
//! action governs it: it reveals the API's schema, which `proto/` already
//! publishes, and nothing about tasks or credentials.

use tonic_reflection::server::{Builder, v1, v1alpha};

/// The encoded `FileDescriptorSet` of `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/taskmint_descriptor.bin"));

fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The v1 reflection service.
pub(super) fn v1() -> v1::ServerReflectionServer<impl v1::ServerReflection> {
    builder()
        .build_v1()
        .expect("the descriptor sets compiled into the binary decode")
}

/// The v1alpha reflection service.
pub(super) fn v1alpha() -> v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection> {
    builder()
        .build_v1alpha()
        .expect("the descriptor sets compiled into the binary decode")
}

#[cfg(test)]
mod tests {
    use prost::Message;

    /// Every taskmint service is in the set reflection serves.
    #[test]
    fn the_descriptor_set_holds_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        for name in &super::super::SERVICE_NAMES[1..] {
            assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
        }
    }
}
