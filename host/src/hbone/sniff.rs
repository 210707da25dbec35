//! Does a tunnel carry HTTP? Decided from its first bytes, which are then replayed to whoever
//! serves the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What the first bytes of a tunnel look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// Anything else, including nothing before the timeout or end of stream.
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not treated as HTTP.
const MAX_LINE: usize = 4096;
/// Longest method token we recognise (`PROPPATCH`, `M-SEARCH`, ...).
const MAX_METHOD: usize = 20;

/// Classifies the bytes seen so far; `None` when more are needed to tell.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let method_len = buf
        .iter()
        .take(MAX_METHOD + 1)
        .position(|&b| !(b.is_ascii_uppercase() || b == b'-'));
    match method_len {
        None if buf.len() <= MAX_METHOD => return None,
        Some(len) if len > 0 && buf[len] == b' ' => {}
        _ => return Some(Detected::Opaque),
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Some(Detected::Opaque)
        } else {
            None
        };
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
}

/// Reads until the first bytes can be classified, the stream ends, or `timeout` passes.
/// Returns what was read, to be replayed with [`Prefixed`].
pub async fn sniff<IO>(io: &mut IO, timeout: Duration) -> io::Result<(Detected, BytesMut)>
where
    IO: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(kind) = classify(&buf) {
            return Ok((kind, buf));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            // Server-first protocols say nothing until the upstream speaks.
            Err(_elapsed) => return Ok((Detected::Opaque, buf)),
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Prefixed<IO> {
    prefix: BytesMut,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: BytesMut, io: IO) -> Self {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn classifies_first_bytes() {
        use Detected::*;
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"", None),
            (b"G", None),
            (b"GET", None),
            (b"GET /", None),
            (b"GET / HTTP/1.1\r\n", Some(Http1)),
            (b"POST /x?y=1 HTTP/1.0\r\nhost: a\r\n", Some(Http1)),
            (b"M-SEARCH * HTTP/1.1\n", Some(Http1)),
            (b"GET / HTTP/2.0\r\n", Some(Opaque)),
            (b"GET /\r\n", Some(Opaque)),
            (b"get / HTTP/1.1\r\n", Some(Opaque)),
            (b"hello\n", Some(Opaque)),
            (b" GET / HTTP/1.1\r\n", Some(Opaque)),
            (b"\x16\x03\x01\x02\x00", Some(Opaque)),
            (b"SSH-2.0-OpenSSH\r\n", Some(Opaque)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04", Some(Http2)),
            (b"PRI * HTTP/1.1\r\n", Some(Http1)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Opaque)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = [b"GET /".as_slice(), &[b'a'; MAX_LINE]].concat();
        assert_eq!(classify(&long), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn sniffs_then_replays_everything() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /a HTT").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"P/1.1\r\n\r\nrest").await.unwrap();
            client.shutdown().await.unwrap();
        });
        let (kind, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(kind, Detected::Http1);
        writer.await.unwrap();
        let mut all = Vec::new();
        Prefixed::new(prefix, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"GET /a HTTP/1.1\r\n\r\nrest");
    }

    #[tokio::test]
    async fn silence_and_end_of_stream_are_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (kind, prefix) = sniff(&mut server, Duration::from_millis(30)).await.unwrap();
        assert_eq!((kind, prefix.len()), (Detected::Opaque, 0));

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let (kind, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((kind, &prefix[..]), (Detected::Opaque, &b"GE"[..]));
    }
}
