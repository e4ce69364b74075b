//! `router`: see `keel::fuzzing::router`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::router(data));
