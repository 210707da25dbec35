//! The strict CONNECT `:authority` parser: whatever it accepts is an
//! `ip:port` it writes back byte for byte, with a non-zero port.

#![no_main]

use wayplug::hbone::parse_authority;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addr) = parse_authority(text) {
        assert_ne!(addr.port(), 0);
        assert_eq!(addr.to_string(), text);
    }
});
