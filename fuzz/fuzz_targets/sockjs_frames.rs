#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gyre_fuzz::sockjs_frames(data));
