//! The task extension decoder (`ca::parse_task_extension`), which relying
//! parties use to read a leaf's task binding. DER has one encoding per
//! value: whatever the decoder accepts must be exactly what the encoder
//! writes for the binding it decoded, and that must decode to the same
//! binding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmint::ca;

fuzz_target!(|der: &[u8]| {
    if let Some(binding) = ca::parse_task_extension(der) {
        let again = ca::task_extension_der(&binding);
        assert_eq!(
            again, der,
            "accepted an encoding that is not the DER of {binding:?}"
        );
        assert_eq!(ca::parse_task_extension(&again), Some(binding));
    }
});
