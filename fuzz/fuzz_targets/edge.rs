#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| jmp_exporter::fuzzing::edge(data));
