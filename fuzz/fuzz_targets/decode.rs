//! Fuzz target: see siptap::fuzz_harness::decode.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = siptap::fuzz_harness::decode(data);
});
