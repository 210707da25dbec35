//! The one filter interface the request pipeline drives. Each plugin ABI
//! adapts to it, so the pipeline never knows which kind of plugin it runs.
//!
//! Phases run in the order a request flows: request headers, body chunks,
//! trailers; then the response's. Every method has the default a plugin that
//! does not care about the phase needs. A filter lives for one request.

use super::PluginFailure;

/// What a filter wants after one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStatus {
    Continue,
    /// Headers: hold the stream until the plugin resumes it. Body: keep
    /// buffering; the next callback sees everything buffered so far.
    Pause,
}

pub trait HttpFilter: Send {
    fn on_request_headers(&mut self, end_of_stream: bool) -> Result<FilterStatus, PluginFailure> {
        let _ = end_of_stream;
        Ok(FilterStatus::Continue)
    }
    /// The exchange's `request_body` holds the bytes this filter sees.
    fn on_request_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
    ) -> Result<FilterStatus, PluginFailure> {
        let _ = (size, end_of_stream);
        Ok(FilterStatus::Continue)
    }
    fn on_request_trailers(&mut self) -> Result<FilterStatus, PluginFailure> {
        Ok(FilterStatus::Continue)
    }
    fn on_response_headers(&mut self, end_of_stream: bool) -> Result<FilterStatus, PluginFailure> {
        let _ = end_of_stream;
        Ok(FilterStatus::Continue)
    }
    fn on_response_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
    ) -> Result<FilterStatus, PluginFailure> {
        let _ = (size, end_of_stream);
        Ok(FilterStatus::Continue)
    }
    fn on_response_trailers(&mut self) -> Result<FilterStatus, PluginFailure> {
        Ok(FilterStatus::Continue)
    }
    /// FAIL_RELOAD: after a failed callback, moves this request to a fresh
    /// instance so the pipeline can run the callback once more. Filters that
    /// cannot do so keep the default, which reports the instance as lost.
    fn reload(&mut self) -> Result<(), PluginFailure> {
        Err(PluginFailure::InstanceLost)
    }
    /// The request is over (answered, failed or abandoned): log and release.
    fn finish(&mut self) {}
}

/// The callbacks a plugin has, read once at load from what its module
/// exports. The pipeline does not enter a plugin for a phase it lacks: no
/// instance lock, no deadline, no snapshot of the exchange, and a body no
/// plugin of the chain handles is never buffered. (Six flags: a plain `u8`
/// reads simpler here than a bitflags type.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks(u8);

impl Hooks {
    pub const NONE: Hooks = Hooks(0);
    pub const REQUEST_HEADERS: Hooks = Hooks(1);
    pub const REQUEST_BODY: Hooks = Hooks(1 << 1);
    pub const REQUEST_TRAILERS: Hooks = Hooks(1 << 2);
    pub const RESPONSE_HEADERS: Hooks = Hooks(1 << 3);
    pub const RESPONSE_BODY: Hooks = Hooks(1 << 4);
    pub const RESPONSE_TRAILERS: Hooks = Hooks(1 << 5);

    pub const fn with(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether any of `other` is set.
    pub const fn any(self, other: Hooks) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the plugin sees or changes a body (data or trailers) in this
    /// direction.
    pub const fn body(self, request: bool) -> bool {
        if request {
            self.any(Hooks::REQUEST_BODY.with(Hooks::REQUEST_TRAILERS))
        } else {
            self.any(Hooks::RESPONSE_BODY.with(Hooks::RESPONSE_TRAILERS))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hooks;

    #[test]
    fn body_hooks_are_per_direction() {
        let h = Hooks::REQUEST_HEADERS.with(Hooks::RESPONSE_TRAILERS);
        assert!(h.any(Hooks::REQUEST_HEADERS));
        assert!(!h.any(Hooks::REQUEST_BODY));
        assert!(!h.body(true));
        assert!(h.body(false), "trailers end a body");
        assert!(!Hooks::NONE.body(true) && !Hooks::NONE.body(false));
    }
}
