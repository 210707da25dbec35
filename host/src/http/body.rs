//! Body types of the data path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::exchange::Exchange;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the pipeline hands on: upstream responses, local responses,
/// bodies rewritten by plugins.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body that keeps something alive until it is finished or dropped: the
/// request's plugin contexts live until the response has been sent.
pub struct Holding<T> {
    inner: ProxyBody,
    _held: T,
}

impl<T> Holding<T> {
    pub fn new(inner: ProxyBody, held: T) -> Self {
        Holding { inner, _held: held }
    }
}

impl<T: Unpin> Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which way a [`counted`] body goes, as seen from the downstream.
#[derive(Debug, Clone, Copy)]
pub enum Counting {
    Received,
    Sent,
}

/// A body whose data bytes are added to the exchange's counts as they
/// pass (`request.size`, `response.size`); frames, end and size hint are
/// the inner body's.
struct Counted {
    inner: ProxyBody,
    exchange: Arc<Exchange>,
    way: Counting,
}

/// `inner`, counted into the exchange's bytes as it passes.
pub fn counted(inner: ProxyBody, exchange: Arc<Exchange>, way: Counting) -> ProxyBody {
    Counted {
        inner,
        exchange,
        way,
    }
    .boxed_unsync()
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let bytes = &self.exchange.bytes;
            match self.way {
                Counting::Received => bytes.add_received(data.len()),
                Counting::Sent => bytes.add_sent(data.len()),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
