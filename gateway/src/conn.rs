//! Accepted HTTP connections: TCP_NODELAY on each, and JSON bodies on the
//! error responses hyper writes by itself.
//!
//! hyper answers a request it cannot parse (URI over 64 KiB → 414, headers
//! too large → 431, a malformed request line → 400) before any route runs,
//! with an empty body. Every answer of this API is `{"error": …}`, so the
//! connection's writer recognizes those canned heads and sends the same
//! status with a JSON body instead.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The gateway's listener: a TCP listener whose connections are wrapped.
pub(crate) struct GatewayListener(pub(crate) TcpListener);

impl Listener for GatewayListener {
    type Io = JsonErrors<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        // Small request/response exchanges on keep-alive connections:
        // without TCP_NODELAY a response split over two writes waits on
        // delayed ACKs.
        let _ = tcp.set_nodelay(true);
        (JsonErrors::new(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The peer address of a gateway connection (axum's `ConnectInfo` type).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, GatewayListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GatewayListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Exposes the connection's [`Peer`] as `ConnectInfo<SocketAddr>`, which
/// the routes read (and tests set directly on requests).
pub(crate) async fn expose_peer(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::extract::ConnectInfo;
    if let Some(ConnectInfo(Peer(addr))) = req.extensions().get::<ConnectInfo<Peer>>().copied() {
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    next.run(req).await
}

/// A connection whose canned hyper error heads get JSON bodies.
pub(crate) struct JsonErrors<S> {
    inner: S,
    /// A replacement response being written, and how far.
    pending: Vec<u8>,
    written: usize,
    /// What to report to hyper once `pending` is out: its own length.
    claimed: usize,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
            claimed: 0,
        }
    }
}

/// If `buf` is a head hyper wrote for a request it could not parse, the
/// response to send instead.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(buf).ok()?;
    let (line, rest) = text.split_once("\r\n")?;
    let mut parts = line.splitn(3, ' ');
    let (version, code) = (parts.next()?, parts.next()?);
    let reason = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || !code.starts_with('4') || code.len() != 3 {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    // hyper's own error heads: no body, closing, no content type. Every
    // response of ours carries a JSON content type.
    if !(lower.contains("content-length: 0\r\n")
        && lower.contains("connection: close\r\n")
        && !lower.contains("content-type:")
        && text.ends_with("\r\n\r\n"))
    {
        return None;
    }
    let message = match code {
        "414" => "request URI too long: it may be at most 65534 bytes (pm3 keys are far shorter)",
        "431" => "request headers too large",
        _ => "malformed HTTP request",
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let date = lower
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .map(|d| format!("date: {d}\r\n"))
        .unwrap_or_default();
    Some(
        format!(
            "{version} {code} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n{date}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes out a pending replacement; Ready once it is all sent.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match replacement(buf) {
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
                Some(r) => {
                    this.pending = r;
                    this.written = 0;
                    this.claimed = buf.len();
                }
            }
        }
        ready!(this.drain(cx))?;
        this.pending.clear();
        Poll::Ready(Ok(this.claimed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn hyper_error_heads_get_a_json_body() {
        let head = "HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\
                    date: Tue, 01 Dec 2026 18:43:14 GMT\r\n\r\n";
        let out = String::from_utf8(replacement(head.as_bytes()).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        assert!(out.contains("content-type: application/json\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("too long"));
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn our_own_responses_pass_through() {
        for head in [
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "{\"revision\":2}",
        ] {
            assert!(replacement(head.as_bytes()).is_none(), "{head}");
        }
    }
}
