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
