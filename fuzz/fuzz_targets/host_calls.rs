//! Every Proxy-Wasm and WASI host function, called from inside a guest with
//! arbitrary pointers, lengths, types and values (see
//! `wayplug::plugin::proxywasm::fuzzing`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wayplug::plugin::proxywasm::fuzzing::host_calls(data);
});
