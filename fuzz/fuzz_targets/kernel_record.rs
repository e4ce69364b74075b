//! `kernel_record`: see `keel::fuzzing::kernel_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::kernel_record(data));
