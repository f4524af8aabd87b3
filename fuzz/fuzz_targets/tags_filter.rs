#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gyre_fuzz::tags_filter(data));
