//! The config parser and validator: any text is either a config or an error
//! naming the file; a config that loads serialises and loads again.

#![no_main]

use std::path::Path;

use wayplug::config::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text, "fuzz.yaml", Path::new("/fuzz")) {
        Ok(config) => {
            let again = serde_norway::to_string(&config).expect("a loaded config serialises");
            if let Err(e) = Config::from_yaml(&again, "fuzz.yaml", Path::new("/fuzz")) {
                panic!("a loaded config does not load again: {e}\n{again}");
            }
        }
        Err(e) => assert!(e.to_string().contains("fuzz.yaml"), "{e}"),
    }
});
