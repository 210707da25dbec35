//! test
#![allow(missing_docs)]

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package wayplug:sdk;
            world imports {
                import wayplug:policy/types@0.1.0;
                import wayplug:policy/log@0.1.0;
                import wayplug:policy/clock@0.1.0;
                import wayplug:policy/metrics@0.1.0;
                import wayplug:policy/kv@0.1.0;
                import wayplug:policy/config@0.1.0;
            }
        ",
        world: "wayplug:sdk/imports",
        generate_all,
        debug: true,
    });
}
