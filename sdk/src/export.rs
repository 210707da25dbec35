//! `export_policy!`: turning a [`Policy`](crate::Policy) into a component.

use std::marker::PhantomData;

/// Exports a [`Policy`](crate::Policy) as the plugin's component exports.
///
/// Invoke it once, at the root of the plugin's `cdylib` crate:
///
/// | invocation                                          | exports (WIT world)               |
/// |-----------------------------------------------------|-----------------------------------|
/// | `export_policy!(MyPolicy)`                          | `policy`                          |
/// | `export_policy!(MyPolicy, hooks: [response])`       | `policy-with-response`            |
/// | `export_policy!(MyPolicy, hooks: [body])`           | `policy-with-body`                |
/// | `export_policy!(MyPolicy, hooks: [response, body])` | `policy-with-response-and-body`   |
///
/// A hook in the list needs its trait ([`ResponseHook`](crate::ResponseHook),
/// [`BodyHook`](crate::BodyHook)); a hook trait the type implements must be
/// in the list, or the waypoint would never call it. Both mistakes are
/// compile errors, on every target, so `cargo test` reports them too.
///
/// On `wasm32` the macro generates the component bindings in the plugin's
/// crate: the crate must depend on the SDK under its own name
/// (`wayplug-sdk`) and must not have a `wit/` folder of its own. Elsewhere it
/// only performs the checks.
///
/// ```
/// use wayplug_sdk::{Decision, Policy, Request, export_policy};
///
/// pub struct AllowAll;
///
/// impl Policy for AllowAll {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, String> {
///         Ok(AllowAll)
///     }
///     fn on_request(&self, _req: &Request) -> Decision {
///         Decision::allow()
///     }
/// }
///
/// export_policy!(AllowAll);
/// # fn main() {}
/// ```
///
/// A response hook that is implemented but not exported does not compile:
///
/// ```compile_fail,E0080
/// use wayplug_sdk::{Decision, Policy, Request, Response, ResponseDecision, ResponseHook, export_policy};
///
/// pub struct Tagger;
///
/// impl Policy for Tagger {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, String> { Ok(Tagger) }
///     fn on_request(&self, _req: &Request) -> Decision { Decision::allow() }
/// }
///
/// impl ResponseHook for Tagger {
///     fn on_response(&self, _req: &Request, _resp: &Response) -> ResponseDecision {
///         ResponseDecision::unchanged().with_header("x-tagged", "yes")
///     }
/// }
///
/// // error: this policy implements ResponseHook but export_policy! does not
/// // export it: write `export_policy!(Type, hooks: [response])`
/// export_policy!(Tagger);
/// # fn main() {}
/// ```
///
/// Nor does a hook that is listed but not implemented:
///
/// ```compile_fail,E0277
/// use wayplug_sdk::{Decision, Policy, Request, export_policy};
///
/// pub struct AllowAll;
///
/// impl Policy for AllowAll {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, String> { Ok(AllowAll) }
///     fn on_request(&self, _req: &Request) -> Decision { Decision::allow() }
/// }
///
/// // error[E0277]: the trait bound `AllowAll: BodyHook` is not satisfied
/// export_policy!(AllowAll, hooks: [body]);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty, hooks: [response, body] $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy-with-response-and-body@0.1.0", response: yes, body: yes);
    };
    ($policy:ty, hooks: [body, response] $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy-with-response-and-body@0.1.0", response: yes, body: yes);
    };
    ($policy:ty, hooks: [response] $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy-with-response@0.1.0", response: yes, body: no);
    };
    ($policy:ty, hooks: [body] $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy-with-body@0.1.0", response: no, body: yes);
    };
    ($policy:ty, hooks: [] $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy@0.1.0", response: no, body: no);
    };
    ($policy:ty $(,)?) => {
        $crate::__wayplug_export!($policy, "wayplug:policy/policy@0.1.0", response: no, body: no);
    };
    ($policy:ty, hooks: [$($other:tt)*] $(,)?) => {
        ::core::compile_error!(
            "export_policy!: the hooks are `response` and `body`, each at most once, e.g. `hooks: [response, body]`"
        );
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "export_policy! expects a policy type and optionally its hooks: `export_policy!(MyPolicy)` or `export_policy!(MyPolicy, hooks: [response, body])`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wayplug_export {
    ($policy:ty, $world:tt, response: $response:ident, body: $body:ident) => {
        const _: () = {
            #[allow(unused_imports)]
            use $crate::__private::NoHooks as _;
            let _ = <$policy as $crate::Policy>::configure;
            let _ = <$policy as $crate::Policy>::on_request;
            $crate::__wayplug_export!(@check $policy, response: $response);
            $crate::__wayplug_export!(@check $policy, body: $body);
        };

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(unsafe_code, missing_docs, unused_imports, unreachable_pub, clippy::all)]
        // The component glue is generated FFI code and needs `unsafe`.
        mod __wayplug_plugin {
            use super::*;

            $crate::__wayplug_generate!($world);

            ::std::thread_local! {
                static POLICY: $crate::__private::PolicySlot<$policy> =
                    const { $crate::__private::PolicySlot::new() };
            }

            struct Plugin;

            impl exports::wayplug::policy::request_policy::Guest for Plugin {
                fn configure(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::configure::<$policy>(&POLICY, &config)
                }

                fn on_request(
                    req: &$crate::__private::bindings::wayplug::policy::types::Request,
                ) -> $crate::__private::bindings::wayplug::policy::types::Decision {
                    $crate::__private::on_request::<$policy>(&POLICY, req)
                }
            }

            $crate::__wayplug_export!(@guest $policy, response: $response);
            $crate::__wayplug_export!(@guest $policy, body: $body);

            export!(Plugin with_types_in self);
        }
    };

    (@check $policy:ty, response: yes) => {
        let _ = <$policy as $crate::ResponseHook>::on_response;
    };
    (@check $policy:ty, response: no) => {
        ::core::assert!(
            !$crate::__private::HookProbe::<$policy>::HAS_RESPONSE,
            "this policy implements ResponseHook but export_policy! does not export it: write `export_policy!(Type, hooks: [response])`"
        );
    };
    (@check $policy:ty, body: yes) => {
        let _ = <$policy as $crate::BodyHook>::on_request_body;
    };
    (@check $policy:ty, body: no) => {
        ::core::assert!(
            !$crate::__private::HookProbe::<$policy>::HAS_BODY,
            "this policy implements BodyHook but export_policy! does not export it: write `export_policy!(Type, hooks: [body])`"
        );
    };

    (@guest $policy:ty, response: yes) => {
        impl exports::wayplug::policy::response_hooks::Guest for Plugin {
            fn on_response(
                req: &$crate::__private::bindings::wayplug::policy::types::Request,
                resp: &$crate::__private::bindings::wayplug::policy::types::Response,
            ) -> $crate::__private::bindings::wayplug::policy::types::ResponseDecision {
                $crate::__private::on_response::<$policy>(&POLICY, req, resp)
            }
        }
    };
    (@guest $policy:ty, response: no) => {};
    (@guest $policy:ty, body: yes) => {
        impl exports::wayplug::policy::body_hooks::Guest for Plugin {
            fn on_request_body(
                req: &$crate::__private::bindings::wayplug::policy::types::Request,
                body: ::std::vec::Vec<u8>,
            ) -> $crate::__private::bindings::wayplug::policy::types::BodyDecision {
                $crate::__private::on_request_body::<$policy>(&POLICY, req, body)
            }
        }
    };
    (@guest $policy:ty, body: no) => {};
}

/// Tells at compile time whether a type implements the hook traits.
///
/// For a concrete type, `HookProbe::<T>::HAS_RESPONSE` resolves to the
/// inherent constant when `T: ResponseHook` holds and falls back to the
/// [`NoHooks`] trait's constant otherwise.
#[doc(hidden)]
pub struct HookProbe<T>(PhantomData<T>);

#[doc(hidden)]
pub trait NoHooks {
    const HAS_RESPONSE: bool = false;
    const HAS_BODY: bool = false;
}

impl<T> NoHooks for HookProbe<T> {}

impl<T: crate::ResponseHook> HookProbe<T> {
    #[doc(hidden)]
    pub const HAS_RESPONSE: bool = true;
}

impl<T: crate::BodyHook> HookProbe<T> {
    #[doc(hidden)]
    pub const HAS_BODY: bool = true;
}

// Native only: on wasm32 each `export_policy!` below would emit the
// component's exports, and a crate can export only one policy.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::{HookProbe, NoHooks as _};
    use crate::{
        BodyDecision, BodyHook, Decision, Policy, Request, Response, ResponseDecision, ResponseHook,
    };

    struct Plain;
    impl Policy for Plain {
        type Config = ();
        fn configure(_: ()) -> Result<Self, String> {
            Ok(Plain)
        }
        fn on_request(&self, _: &Request) -> Decision {
            Decision::allow()
        }
    }

    struct Both;
    impl Policy for Both {
        type Config = ();
        fn configure(_: ()) -> Result<Self, String> {
            Ok(Both)
        }
        fn on_request(&self, _: &Request) -> Decision {
            Decision::allow()
        }
    }
    impl ResponseHook for Both {
        fn on_response(&self, _: &Request, _: &Response) -> ResponseDecision {
            ResponseDecision::unchanged()
        }
    }
    impl BodyHook for Both {
        fn on_request_body(&self, _: &Request, _: &[u8]) -> BodyDecision {
            BodyDecision::unchanged()
        }
    }

    #[test]
    fn probe_sees_hook_traits() {
        const PLAIN: (bool, bool) = (
            HookProbe::<Plain>::HAS_RESPONSE,
            HookProbe::<Plain>::HAS_BODY,
        );
        const BOTH: (bool, bool) = (HookProbe::<Both>::HAS_RESPONSE, HookProbe::<Both>::HAS_BODY);
        assert_eq!(PLAIN, (false, false));
        assert_eq!(BOTH, (true, true));
    }

    // The macro's checks run natively too.
    crate::export_policy!(Plain);
    crate::export_policy!(Both, hooks: [body, response]);
}
