//! An accepted socket as hyper sees it, and the HTTP version detection.
//!
//! hyper_util's automatic HTTP/1-or-2 server wraps the socket in a private
//! type while it looks for the HTTP/2 preface, so after a WebSocket upgrade
//! the connection could not be taken back as the `TcpStream` it is. The
//! bidirectional WebSocket needs exactly that (its broadcasts are written
//! straight to the socket, see `gyre_node::shared`), so this module does the
//! detection itself, with the same rule (the 24-byte HTTP/2 connection
//! preface, else HTTP/1), and hands hyper a [`ConnIo`] that an upgrade can
//! downcast back.
//!
//! Failure modes: a peer that sends part of the preface and stalls is cut
//! off by the caller's first-request deadline (detection waits for bytes
//! with no timer of its own); a peer that closes during detection gives
//! hyper an empty stream, which it ends quietly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// A TLS connection as accepted.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection, plain or TLS, with bytes already read from it
/// (by detection, or by hyper before an upgrade) replayed first.
///
/// TLS state is boxed: it is over a kilobyte, and plain connections (the
/// common case behind a TLS-terminating ingress) should not carry its room.
pub struct ConnIo {
    pre: Bytes,
    io: Either<TcpStream, Box<TlsStream>>,
}

impl ConnIo {
    /// A connection whose next bytes are `pre`, then the socket's.
    pub fn new(pre: Bytes, io: Either<TcpStream, Box<TlsStream>>) -> Self {
        ConnIo { pre, io }
    }

    /// The plain socket and the bytes to replay before it, or the
    /// connection back when it is TLS.
    pub fn into_plain(self) -> Result<(TcpStream, Bytes), Box<ConnIo>> {
        let ConnIo { pre, io } = self;
        match io {
            Either::Left(tcp) => Ok((tcp, pre)),
            io => Err(Box::new(ConnIo { pre, io })),
        }
    }

    /// Puts `more` (read after what is still pending) in front of the socket.
    ///
    /// Copied, never kept as given: hyper hands over what it read past the
    /// request as a slice of its read buffer, and holding even an empty slice
    /// would keep that whole buffer (8 KiB and more) alive for the life of
    /// the connection (measured: 5 → 17.5 KiB per idle WebSocket).
    pub fn replay(mut self, more: Bytes) -> Self {
        self.pre = owned([&self.pre[..], &more[..]].concat());
        self
    }
}

/// Bytes that own exactly their content (none for an empty buffer).
pub fn owned(v: Vec<u8>) -> Bytes {
    if v.is_empty() { Bytes::new() } else { Bytes::from(v) }
}

/// Reads until the bytes read are, or cannot become, the HTTP/2 preface.
/// Returns whether they are, and the connection with them to replay.
pub async fn detect(mut io: Either<TcpStream, Box<TlsStream>>) -> io::Result<(bool, ConnIo)> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    while n < buf.len() {
        let r = io.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    Ok((buf[..n] == H2_PREFACE[..], ConnIo::new(Bytes::copy_from_slice(&buf[..n]), io)))
}

/// Moves what fits of `pre` (bytes read earlier) into `buf`; an emptied
/// `pre` gives its buffer back now, not when the connection ends.
pub fn replay_into(pre: &mut Bytes, buf: &mut ReadBuf<'_>) {
    let n = pre.len().min(buf.remaining());
    buf.put_slice(&pre[..n]);
    pre.advance(n);
    if pre.is_empty() {
        *pre = Bytes::new();
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            replay_into(&mut self.pre, buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What the peer sends first → detected as HTTP/2, and every byte is
    /// still there to read afterwards.
    #[tokio::test]
    async fn detection_replays_what_it_read() {
        let table: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0", true),
            (b"PRI * HTTP/1.1\r\n\r\n", false),
            (b"P", false),
            (b"", false),
        ];
        for &(sent, h2) in table {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            client.shutdown().await.unwrap();
            let (got_h2, mut io) = detect(Either::Left(server)).await.unwrap();
            assert_eq!(got_h2, h2, "{:?}", String::from_utf8_lossy(sent));
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, sent);
        }
    }
}
