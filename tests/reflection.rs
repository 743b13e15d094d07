//! Server reflection on the mTLS listener: a client with only its SVID lists
//! every service and resolves each taskmint service's file and its imports,
//! which is what grpcurl does before it can call a method; health keeps
//! working beside it; a caller without a certificate is refused.

mod common;

use common::*;
use prost::Message;
use prost_types::FileDescriptorProto;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_reflection::pb::{v1, v1alpha};

/// One v1 request on a fresh stream, its one answer.
async fn ask_v1(
    client: &mut v1::server_reflection_client::ServerReflectionClient<tonic::transport::Channel>,
    req: v1::server_reflection_request::MessageRequest,
) -> Result<v1::server_reflection_response::MessageResponse, tonic::Status> {
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(req),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.next().await.expect("one answer")?;
    Ok(answer.message_response.expect("a response"))
}

fn files(r: v1::server_reflection_response::MessageResponse) -> Vec<FileDescriptorProto> {
    match r {
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f) => f
            .file_descriptor_proto
            .iter()
            .map(|b| FileDescriptorProto::decode(b.as_slice()).unwrap())
            .collect(),
        other => panic!("expected file descriptors, got {other:?}"),
    }
}

const TASKMINT_SERVICES: [(&str, &str); 3] = [
    ("taskmint.v1.Issuer", "MintJwt"),
    ("taskmint.v1.Revocations", "WatchRevocations"),
    ("taskmint.v1.Admin", "ExportAudit"),
];

#[tokio::test]
async fn reflection_lists_and_describes_every_service_to_an_svid_holder() {
    use v1::server_reflection_request::MessageRequest as Req;
    use v1::server_reflection_response::MessageResponse as Resp;
    let s = start().await;
    let client = s.client("agent").await;
    let mut refl = v1::server_reflection_client::ServerReflectionClient::new(client.channel());

    let Resp::ListServicesResponse(list) = ask_v1(&mut refl, Req::ListServices(String::new()))
        .await
        .unwrap()
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "taskmint.v1.Admin",
            "taskmint.v1.Issuer",
            "taskmint.v1.Revocations",
        ]
    );

    for (service, method) in TASKMINT_SERVICES {
        let found = files(
            ask_v1(&mut refl, Req::FileContainingSymbol(service.into()))
                .await
                .unwrap(),
        );
        // The first file declares the service, with its methods.
        let (package, short) = service.rsplit_once('.').unwrap();
        let file = &found[0];
        assert_eq!(file.package(), package);
        let svc = file
            .service
            .iter()
            .find(|s| s.name() == short)
            .unwrap_or_else(|| panic!("{service} in {}", file.name()));
        assert!(
            svc.method.iter().any(|m| m.name() == method),
            "{service} has {method}"
        );
        // Every import resolves too (grpcurl needs them to build requests).
        for dep in &file.dependency {
            let got = files(
                ask_v1(&mut refl, Req::FileByFilename(dep.clone()))
                    .await
                    .unwrap(),
            );
            assert_eq!(got[0].name(), dep);
        }
    }
    // A symbol that does not exist is NOT_FOUND.
    let err = ask_v1(
        &mut refl,
        Req::FileContainingSymbol("taskmint.v1.Nope".into()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // v1alpha, as older grpcurl releases use it.
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(client.channel());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for (service, _) in TASKMINT_SERVICES {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    assert!(
        names
            .iter()
            .any(|n| n == "grpc.reflection.v1alpha.ServerReflection")
    );

    // Health answers beside it, and a call named by reflection works.
    let mut c = client.clone();
    assert_eq!(
        c.health("taskmint.v1.Issuer").await.unwrap(),
        tonic_health::ServingStatus::Serving
    );
    c.trust_bundle().await.unwrap();
}

#[tokio::test]
async fn reflection_refuses_a_caller_without_a_certificate() {
    use v1::server_reflection_request::MessageRequest as Req;
    let s = start().await;
    let anonymous = s.client_with(None).await;
    let mut refl = v1::server_reflection_client::ServerReflectionClient::new(anonymous.channel());
    let err = ask_v1(&mut refl, Req::ListServices(String::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
