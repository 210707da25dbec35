//! Registering host functions so that a bug in one cannot take the host
//! down: a panic inside a host function body is caught where it happens and
//! becomes a trap of the guest call, which poisons the instance (the request
//! then fails per the plugin's failStrategy) instead of unwinding through
//! wasmtime and the request pipeline.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs one host function body, turning a panic into an error for the
/// guest call.
pub fn guarded<R>(name: &str, body: impl FnOnce() -> wasmtime::Result<R>) -> wasmtime::Result<R> {
    // The body's state is the store and the exchange; both are poisoned or
    // left as plain data, and the instance is discarded, so observing them
    // half-updated after a panic is harmless.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => Err(wasmtime::Error::msg(format!(
            "host function {name} panicked: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// `host_fn!(linker, module, "name", |c, a: i32, ..| body)` defines a host
/// function whose body runs under [`guarded`]. The caller is bound mutably
/// as `c`; `return` inside the body returns from the host function.
macro_rules! host_fn {
    ($linker:expr, $module:expr, $name:expr, |$c:ident $(, $arg:ident : $ty:ty)* $(,)?| $body:expr $(,)?) => {
        $linker.func_wrap(
            $module,
            $name,
            move |$c: ::wasmtime::Caller<'_, $crate::plugin::proxywasm::HostState> $(, $arg: $ty)*| {
                #[allow(unused_mut)]
                let mut $c = $c;
                $crate::plugin::proxywasm::guard::guarded($name, move || $body)
            },
        )
    };
}
pub(crate) use host_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_function() {
        let r: wasmtime::Result<i32> = guarded("proxy_example", || panic!("index out of range"));
        let msg = r.unwrap_err().to_string();
        assert_eq!(
            msg,
            "host function proxy_example panicked: index out of range"
        );
        let r: wasmtime::Result<i32> = guarded("proxy_example", || panic!("{} headers", 30_000));
        assert!(r.unwrap_err().to_string().ends_with("30000 headers"));
        assert_eq!(guarded("proxy_example", || Ok(7)).unwrap(), 7);
    }
}
