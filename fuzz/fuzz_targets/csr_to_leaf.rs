//! The CSR -> leaf path of `MintX509` and `Renew`: parse and verify a CSR
//! (`ca::parse_csr`), then template, sign and validate a leaf for its key
//! (`SigningCa::issue`). Every CSR the parser accepts must be signable, and
//! the leaf's task extension must read back as what was put in.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskmint::ca::{self, SigningCa, TaskBinding, X509Template};
use taskmint::identity::{SpiffeId, TaskId};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A dev signing CA, made once.
static CA: LazyLock<SigningCa> = LazyLock::new(|| {
    let root = taskmint::devca::DevRoot::new("example.org").expect("a dev root");
    let ca = root.signing_ca().expect("a dev signing CA");
    SigningCa::from_der(vec![ca.cert_der.into()], &ca.key_der).expect("the dev signing CA loads")
});

const HOLDER: &str = "spiffe://example.org/workload/agent";

fuzz_target!(|der: &[u8]| {
    let Ok(key) = ca::parse_csr(der) else {
        return;
    };
    // The template varies a little with the input, so both CN rules (a task
    // id of up to 64 characters or longer) and both extension shapes are
    // signed and read back.
    let long = der.len().is_multiple_of(2);
    let task = TaskId::parse(&format!(
        "task-{}",
        if long {
            "x".repeat(70)
        } else {
            der.len().to_string()
        }
    ))
    .expect("a valid task id");
    let id = SpiffeId::new(HOLDER).expect("a valid SPIFFE ID");
    let binding = TaskBinding {
        task_id: task.as_str().to_owned(),
        holder: HOLDER.to_owned(),
        owner: if long {
            "team-a".to_owned()
        } else {
            String::new()
        },
        break_glass: long,
    };
    let now = taskmint::clock::now_unix();
    let t = X509Template {
        spiffe_id: &id,
        task_id: &task,
        task_holder: &binding.holder,
        owner: &binding.owner,
        break_glass: binding.break_glass,
        serial: &[0x5a; 16],
        not_before: now - 10,
        not_after: now + 300,
    };
    let leaf = match CA.issue(&t, &key) {
        Ok(leaf) => leaf,
        Err(e) => panic!("a CSR parse_csr accepted could not be issued a leaf: {e}"),
    };
    let (rest, cert) = X509Certificate::from_der(&leaf).expect("the leaf parses");
    assert!(rest.is_empty());
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ca::TASK_EXTENSION_OID_STR)
        .expect("the leaf carries the task extension");
    assert!(!ext.critical);
    assert_eq!(ca::parse_task_extension(ext.value), Some(binding));
});
