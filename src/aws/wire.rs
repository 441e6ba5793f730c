//! A lean HTTP/1.1 client for the SQS calls on every message's path and the `http` target (issue 32).
//!
//! Why not hyper's client here: every receive in flight is a connection of its own (a long poll
//! holds it up to 20 s), and hyper 1.x with hyper-util 0.1 keeps three fixed allocations per
//! connection whatever the request — a dispatch channel whose first block holds 32 request
//! slots (~8.5 KiB), an 8 KiB read buffer reserved before the answer arrives and an 8 KiB header
//! buffer for writing — about 25 KiB a connection, two thirds of an idle poller's memory
//! (`bench/RESULTS.md`, "Memory: where it goes"). Here a waiting long poll holds its socket and
//! nothing else: the request is written, the client waits for the socket to be readable, and
//! only then takes a buffer, sized for the answer and freed with it.
//!
//! What it does, as hyper does it for these calls: `POST` with `content-length`, keep-alive with
//! a pool of idle connections (the most recently used first; 60 s idle at most; one the peer
//! closed is dropped before use), answers framed by `content-length`, `chunked` or the end of
//! the connection, a request on a pooled connection that the peer had closed without answering
//! sent again once on a new one, TLS with the service's rustls settings, and egress proxies as
//! curl and the AWS SDKs take them from the environment (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, lower case too; read by hyper-util's own matcher): an `http://`
//! endpoint's requests go to the proxy in absolute form, an `https://` endpoint's through a
//! `CONNECT` tunnel. What it does not: HTTP/2, `Expect: 100-continue`, redirects, `https://`
//! proxies. Its behaviour is held against hyper's on the same answers by the tests below.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// How long a pooled connection may sit idle before it is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// The most an answer's status line and headers may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers an answer may carry.
const MAX_HEADERS: usize = 100;
/// How much the first read of an answer reserves (SQS's answers to small messages fit).
const FIRST_READ: usize = 4096;
/// Reads after the first reserve up to this much at a time.
const READ_CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a request's small pieces are gathered into before they are written.
const WRITE_CHUNK: usize = 16 * 1024;

/// A request's body in pieces, read by index: a request holds a reference to it, whatever
/// makes it up (issue 32: an iterator over a batch's records, copied into every layer of the
/// request's state, was most of a waiting batch's 1.6 KiB).
pub trait Parts: Sync {
    fn count(&self) -> usize;
    fn part(&self, i: usize) -> &[u8];
    /// The bytes of all the pieces.
    fn byte_len(&self) -> usize {
        (0..self.count()).map(|i| self.part(i).len()).sum()
    }
}

impl Parts for &[u8] {
    fn count(&self) -> usize {
        1
    }
    fn part(&self, _: usize) -> &[u8] {
        self
    }
}

impl Parts for Vec<&[u8]> {
    fn count(&self) -> usize {
        self.len()
    }
    fn part(&self, i: usize) -> &[u8] {
        self[i]
    }
}

/// An answer: its status, headers and whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No connection: refused, unreachable, name not resolved, TLS handshake failed, timed out.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The connection failed or closed before the whole answer arrived.
    #[error("{0}")]
    Broken(String),
    /// The answer is not HTTP/1.1 as a server sends it.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The body is longer than the caller's limit.
    #[error("the answer is longer than {0} bytes")]
    TooLong(usize),
}

/// A connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether a pooled connection can carry another request: the peer has not closed it and
    /// (plain connections) has sent nothing unasked. A TLS peer may send a session ticket late,
    /// which is no reason to drop the connection.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.tcp().peek(&mut probe).now_or_never() {
            None => true,
            Some(Ok(0) | Err(_)) => false,
            Some(Ok(_)) => matches!(self, Conn::Tls(_)),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An egress proxy a [`Wire`]'s connections go through.
struct Proxy {
    host: String,
    port: u16,
    /// `proxy-authorization`, from the proxy URL's user and password.
    auth: Option<String>,
}

/// The client of one endpoint (`http://` or `https://`, a host, a port and a path).
pub struct Wire {
    host: String,
    port: u16,
    /// The `host` header: the authority without a default port (as the signer signs it).
    authority: String,
    /// The request line's target: the path, or the whole URL when an `http://` endpoint is
    /// reached through a proxy.
    path: String,
    proxy: Option<Proxy>,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// Whether a request a pooled connection closed on unanswered goes again on a new one.
    resend_unanswered: bool,
}

impl Wire {
    /// The client of `uri`, with `tls` for `https://`.
    ///
    /// # Errors
    /// When `uri` is not an absolute `http://` or `https://` URL with a host.
    pub fn new(uri: &str, tls: rustls::ClientConfig) -> Result<Wire, String> {
        Self::new_via(uri, tls, crate::net::proxy::environment())
    }

    /// [`Self::new`] with the proxies `proxies` says (tests; `new` reads the environment).
    ///
    /// # Errors
    /// As [`Self::new`], and when the proxy for `uri` is not an `http://` URL.
    pub fn new_via(
        uri: &str,
        tls: rustls::ClientConfig,
        proxies: &hyper_util::client::proxy::matcher::Matcher,
    ) -> Result<Wire, String> {
        let parsed: hyper::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri}: not an http:// or https:// URL")),
        };
        let host = parsed.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = match parsed.port_u16() {
            Some(p) if p != if https { 443 } else { 80 } => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = if https {
            let name = rustls_pki_types::ServerName::try_from(bare.clone()).map_err(|e| format!("{uri}: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
        let proxy = proxies.intercept(&parsed).map(|p| proxy_of(&p, uri)).transpose()?;
        let path = match (&proxy, https) {
            (Some(_), false) => format!("http://{authority}{path}"),
            _ => path,
        };
        Ok(Wire {
            host: bare,
            port,
            authority,
            path,
            proxy,
            tls,
            idle: Mutex::new(Vec::new()),
            resend_unanswered: true,
        })
    }

    /// A request is never sent twice, not even when a pooled connection closes without a word
    /// (the worker's batches: a worker that read the batch and then died must not get it again
    /// at once; the dispatcher's retry decides). Pooled connections the peer has closed are
    /// still dropped before use.
    #[must_use]
    pub fn sent_once(mut self) -> Self {
        self.resend_unanswered = false;
        self
    }

    /// POSTs `body` with `headers` (besides `host` and `content-length`); the answer's body may
    /// be at most `max_body` bytes.
    ///
    /// # Errors
    /// [`WireError`]: no connection, a broken or malformed answer, or one too long.
    pub async fn post(&self, headers: &[(&str, &str)], body: &[u8], max_body: usize) -> Result<Answer, WireError> {
        self.post_parts(headers, &body, max_body).await
    }

    /// [`Self::post`] with a body in pieces (an event made of its records' own bytes): sent
    /// without being put together first.
    ///
    /// # Errors
    /// [`WireError`]: no connection, a broken or malformed answer, or one too long.
    pub async fn post_parts(
        &self,
        headers: &[(&str, &str)],
        body: &dyn Parts,
        max_body: usize,
    ) -> Result<Answer, WireError> {
        let head = self.request_head(headers, body.byte_len());
        self.send(&head, body, max_body).await
    }

    /// [`Self::post_parts`] with its head made beforehand ([`Self::request_head`]): a caller
    /// that makes the headers from its own structures lets them go before the request waits
    /// for its answer (issue 32: a thousand batches at the worker).
    ///
    /// # Errors
    /// As [`Self::post`].
    pub async fn send(&self, head: &[u8], body: &dyn Parts, max_body: usize) -> Result<Answer, WireError> {
        let mut pooled = self.take_idle();
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => Box::pin(self.connect()).await?,
            };
            match exchange(&mut conn, head, body, max_body).await {
                Ok((answer, keep)) => {
                    if keep {
                        self.put_idle(conn);
                    }
                    return Ok(answer);
                }
                // a pooled connection the peer closed before it read the request: once more on
                // a new one (hyper's client does the same)
                Err(Failure::Unanswered(_)) if reused && self.resend_unanswered => {}
                Err(Failure::Unanswered(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// The head of a POST of `body_len` bytes with `headers` (besides `host` and
    /// `content-length`).
    pub fn request_head(&self, headers: &[(&str, &str)], body_len: usize) -> Vec<u8> {
        let head_len: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = Vec::with_capacity(64 + self.path.len() + self.authority.len() + head_len);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.authority.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(body_len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        // an http:// endpoint through a proxy: the proxy reads the credentials of each request
        if let (Some(Proxy { auth: Some(auth), .. }), None) = (&self.proxy, &self.tls) {
            out.extend_from_slice(b"proxy-authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIMIT && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // the oldest are at the front: those past the limit go
        let stale = idle.iter().take_while(|(_, since)| since.elapsed() >= IDLE_LIMIT).count();
        idle.drain(..stale);
        idle.push((conn, Instant::now()));
    }

    async fn connect(&self) -> Result<Conn, WireError> {
        let target = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let connect = async {
            let (host, port) =
                self.proxy.as_ref().map_or((self.host.as_str(), self.port), |p| (p.host.as_str(), p.port));
            let mut tcp = TcpStream::connect((host, port)).await.map_err(|e| match &self.proxy {
                Some(_) => format!("the proxy {host}:{port}: {e}"),
                None => e.to_string(),
            })?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            if let (Some(proxy), Some(_)) = (&self.proxy, &self.tls) {
                tunnel(&mut tcp, &target, proxy).await?;
            }
            match &self.tls {
                None => Ok(Conn::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|s| Conn::Tls(Box::new(s)))
                    .map_err(|e| format!("TLS: {}", crate::net::error_chain(&e))),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(WireError::Connect(format!("{target}: {e}"))),
            Err(_) => {
                Err(WireError::Connect(format!("{target}: no connection within {} s", CONNECT_TIMEOUT.as_secs())))
            }
        }
    }

    /// Connections in the pool now (tests).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// The proxy `p` matched for `uri`, as a [`Wire`] uses it: an `http://` proxy only.
fn proxy_of(p: &hyper_util::client::proxy::matcher::Intercept, uri: &str) -> Result<Proxy, String> {
    let proxy = p.uri();
    if proxy.scheme_str() != Some("http") {
        return Err(format!("{uri}: the proxy for it is not an http:// URL (an https:// proxy is not supported)"));
    }
    let host = proxy.host().ok_or_else(|| format!("{uri}: the proxy URL has no host"))?;
    Ok(Proxy {
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port: proxy.port_u16().unwrap_or(80),
        auth: p.basic_auth().and_then(|v| v.to_str().ok()).map(str::to_string),
    })
}

/// The most of a proxy's answer to `CONNECT` that is read.
const MAX_CONNECT_ANSWER: usize = 8 * 1024;

/// Opens a tunnel to `target` (`host:port`) through the proxy `tcp` is connected to.
async fn tunnel(tcp: &mut TcpStream, target: &str, proxy: &Proxy) -> Result<(), String> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        request.push_str(&format!("proxy-authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    let via = format!("the proxy {}:{}", proxy.host, proxy.port);
    tcp.write_all(request.as_bytes()).await.map_err(|e| format!("{via}: {e}"))?;
    // nothing comes through the tunnel before this side speaks: what is read is the answer
    let mut answer = Vec::with_capacity(256);
    loop {
        let n = tcp.read_buf(&mut answer).await.map_err(|e| format!("{via}: {e}"))?;
        if n == 0 {
            return Err(format!("{via} closed the connection before it answered CONNECT"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(format!("{via} refused the tunnel: HTTP {code} {}", parsed.reason.unwrap_or("")));
                }
                if len != answer.len() {
                    return Err(format!("{via} sent bytes into the tunnel before it was used"));
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if answer.len() > MAX_CONNECT_ANSWER => {
                return Err(format!("{via}: an answer to CONNECT longer than {} KiB", MAX_CONNECT_ANSWER >> 10));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("{via}: its answer to CONNECT is not HTTP: {e}")),
        }
    }
}

/// An exchange's failure: before any byte of the answer (the request may be sent again on a new
/// connection when this one came from the pool), or after.
enum Failure {
    Unanswered(WireError),
    Other(WireError),
}

/// Writes the request (`head`, then `body`), reads the answer; returns it and whether the
/// connection may carry another.
async fn exchange(conn: &mut Conn, head: &[u8], body: &dyn Parts, max_body: usize) -> Result<(Answer, bool), Failure> {
    let unanswered = |e: io::Error| Failure::Unanswered(WireError::Broken(format!("the connection failed: {e}")));
    write_request(conn, head, body).await.map_err(unanswered)?;
    // a long poll waits here holding its socket and nothing else (with TLS too: nothing of this
    // answer can be in rustls's buffers before its bytes reach the socket)
    conn.tcp().readable().await.map_err(unanswered)?;
    let ((status, headers, keep_alive, _), rest) = read_head(conn).await?;
    let framing = framing(&headers, status).map_err(Failure::Other)?;
    let (body, clean_end) = read_body(conn, &framing, rest, max_body).await?;
    let keep = keep_alive && clean_end && !matches!(framing, Framing::Close);
    Ok((Answer { status, headers, body: Bytes::from(body) }, keep))
}

/// Reads the answer's head, skipping informational (1xx) answers; returns it with what was read
/// past it. A connection that fails before the first byte is [`Failure::Unanswered`].
async fn read_head(conn: &mut Conn) -> Result<((StatusCode, HeaderMap, bool, usize), Vec<u8>), Failure> {
    let unanswered = |e: io::Error| Failure::Unanswered(WireError::Broken(format!("the connection failed: {e}")));
    let broken = |e: io::Error| Failure::Other(WireError::Broken(format!("the answer broke off: {e}")));
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    let head = loop {
        // parsed in a plain function: the header slots stay off this future's state, which a
        // waiting long poll would otherwise carry (3 KiB)
        match parse_head(&buf) {
            Ok(Head::Informational(len)) => {
                buf.drain(..len);
                continue;
            }
            Ok(Head::Complete(head)) => break head,
            Ok(Head::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(Failure::Other(WireError::Malformed(format!(
                    "a head longer than {} KiB",
                    MAX_HEAD_BYTES >> 10
                ))));
            }
            Ok(Head::Partial) => {}
            Err(e) => return Err(Failure::Other(e)),
        }
        let before = buf.len();
        let n = read_some(conn, &mut buf).await.map_err(|e| if before == 0 { unanswered(e) } else { broken(e) })?;
        if n == 0 {
            let e = WireError::Broken("the connection closed before the answer".into());
            return Err(if before == 0 { Failure::Unanswered(e) } else { Failure::Other(e) });
        }
    };
    let rest = buf.split_off(head.3);
    Ok((head, rest))
}

/// Reads the body as `framing` says, at most `max_body` bytes, starting with `rest` (what came
/// with the head); returns it and whether the connection ended cleanly after it.
async fn read_body(
    conn: &mut Conn,
    framing: &Framing,
    mut rest: Vec<u8>,
    max_body: usize,
) -> Result<(Vec<u8>, bool), Failure> {
    let broken = |e: io::Error| Failure::Other(WireError::Broken(format!("the answer broke off: {e}")));
    Ok(match *framing {
        Framing::Length(len) => {
            if len > max_body {
                return Err(Failure::Other(WireError::TooLong(max_body)));
            }
            let mut body = Vec::with_capacity(len);
            let first = rest.len().min(len);
            body.extend_from_slice(&rest[..first]);
            let extra = rest.len() > len;
            drop(rest);
            while body.len() < len {
                let want = (len - body.len()).min(READ_CHUNK);
                let n = (&mut *conn).take(want as u64).read_buf(&mut body).await.map_err(broken)?;
                if n == 0 {
                    return Err(Failure::Other(WireError::Broken(format!(
                        "the connection closed {} bytes into a body of {len}",
                        body.len()
                    ))));
                }
            }
            (body, !extra)
        }
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            let mut body = Vec::new();
            loop {
                let used = decoder.feed(&rest, &mut body, max_body).map_err(Failure::Other)?;
                rest.drain(..used);
                if decoder.done() {
                    break;
                }
                if read_some(conn, &mut rest).await.map_err(broken)? == 0 {
                    return Err(Failure::Other(WireError::Broken(
                        "the connection closed inside a chunked body".into(),
                    )));
                }
            }
            let clean = rest.is_empty();
            (body, clean)
        }
        Framing::Close => {
            let mut body = rest;
            loop {
                if body.len() > max_body {
                    return Err(Failure::Other(WireError::TooLong(max_body)));
                }
                if read_some(conn, &mut body).await.map_err(broken)? == 0 {
                    break;
                }
            }
            (body, false)
        }
        Framing::Empty => (Vec::new(), rest.is_empty()),
    })
}

/// Writes the head and the body's pieces: small pieces gathered into writes of up to
/// [`WRITE_CHUNK`] (a transient buffer, gone before the answer is awaited), large ones as they are.
async fn write_request(conn: &mut Conn, head: &[u8], body: &dyn Parts) -> io::Result<()> {
    let total = head.len() + body.byte_len();
    let mut gathered: Vec<u8> = Vec::with_capacity(total.min(WRITE_CHUNK));
    gathered.extend_from_slice(head);
    for i in 0..body.count() {
        let part = body.part(i);
        if gathered.len() + part.len() > WRITE_CHUNK {
            conn.write_all(&gathered).await?;
            gathered.clear();
            if part.len() > WRITE_CHUNK {
                conn.write_all(part).await?;
                continue;
            }
        }
        gathered.extend_from_slice(part);
    }
    if !gathered.is_empty() {
        conn.write_all(&gathered).await?;
    }
    conn.flush().await
}

/// What the bytes of an answer so far hold.
enum Head {
    Partial,
    /// A 1xx answer of this many bytes, to skip.
    Informational(usize),
    /// Status, headers, whether the connection may stay open, and the head's length.
    Complete((StatusCode, HeaderMap, bool, usize)),
}

fn parse_head(buf: &[u8]) -> Result<Head, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(e) => return Err(WireError::Malformed(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        return Ok(Head::Informational(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed(format!("status {code}")))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Malformed(format!("header name {:?}", h.name)))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| WireError::Malformed(format!("the value of {}", h.name)))?;
        headers.append(name, value);
    }
    let keep_alive =
        response.version == Some(1) && !headers.get_all("connection").iter().any(|v| has_token(v.as_bytes(), b"close"));
    Ok(Head::Complete((status, headers, keep_alive, len)))
}

/// Reads what is there into `buf`'s spare room (reserving some first); 0 at the end.
async fn read_some(conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.len().clamp(FIRST_READ, READ_CHUNK));
    }
    conn.read_buf(buf).await
}

/// How an answer's body ends.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    /// At the end of the connection.
    Close,
    Empty,
}

fn framing(headers: &HeaderMap, status: StatusCode) -> Result<Framing, WireError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let encodings: Vec<&HeaderValue> = headers.get_all("transfer-encoding").iter().collect();
    if let Some(last) = encodings.last() {
        // chunked must be the last coding (RFC 9112 6.3); anything else is not read
        return if last
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && encodings
                .iter()
                .all(|v| v.as_bytes().split(|b| *b == b',').all(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")))
        {
            Ok(Framing::Chunked)
        } else {
            Err(WireError::Malformed("a transfer-encoding other than chunked".into()))
        };
    }
    let mut length: Option<usize> = None;
    for v in headers.get_all("content-length") {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| WireError::Malformed(format!("content-length {:?}", String::from_utf8_lossy(part))))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed("two different content-lengths".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A `chunked` body decoder fed the bytes as they come.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum ChunkState {
    /// Before a chunk's size line.
    #[default]
    Size,
    /// Inside a chunk: bytes left.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
    Done,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can of `input` into `out`; returns how many bytes of `input` it used.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<usize, WireError> {
        let malformed = |what: &str| WireError::Malformed(format!("chunked body: {what}"));
        let mut at = 0;
        loop {
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(eol) = input[at..].windows(2).position(|w| w == b"\r\n") else {
                        if input.len() - at > 4096 {
                            return Err(malformed("a line longer than 4 KiB"));
                        }
                        return Ok(at);
                    };
                    let line = &input[at..at + eol];
                    at += eol + 2;
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let digits = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
                    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                        return Err(malformed("a chunk size that is not hexadecimal"));
                    }
                    let size = usize::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 16)
                        .map_err(|_| malformed("a chunk size"))?;
                    if out.len().saturating_add(size) > max {
                        return Err(WireError::TooLong(max));
                    }
                    self.state = if size == 0 { ChunkState::Trailer } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - at);
                    if take == 0 {
                        return Ok(at);
                    }
                    out.extend_from_slice(&input[at..at + take]);
                    at += take;
                    self.state = if take == left { ChunkState::DataEnd } else { ChunkState::Data(left - take) };
                }
                ChunkState::DataEnd => {
                    if input.len() - at < 2 {
                        return Ok(at);
                    }
                    if &input[at..at + 2] != b"\r\n" {
                        return Err(malformed("no CRLF after a chunk"));
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `http://` endpoint through a proxy: the request goes to the proxy in absolute form,
    /// with the proxy URL's credentials; `NO_PROXY` sends it straight.
    #[tokio::test]
    async fn an_http_endpoint_behind_a_proxy_is_asked_in_absolute_form_with_its_credentials() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = format!("http://user:pass@{}", listener.local_addr().unwrap());
        let answering = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\nhi") {
                s.read_buf(&mut head).await.unwrap();
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let proxies =
            hyper_util::client::proxy::matcher::Matcher::builder().http(proxy).no("straight.internal").build();
        let tls = crate::net::tls_config(None, None).unwrap();
        let wire = Wire::new_via("http://worker.internal:8080/sqs?x=1", tls.clone(), &proxies).unwrap();
        let answer = wire.post(&[], b"hi", 1024).await.unwrap();
        assert_eq!(&answer.body[..], b"ok");
        let head = answering.await.unwrap();
        assert!(head.starts_with("POST http://worker.internal:8080/sqs?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: worker.internal:8080\r\n"), "{head}");
        assert!(head.contains("\r\nproxy-authorization: Basic dXNlcjpwYXNz\r\n"), "{head}");
        let straight = Wire::new_via("http://straight.internal:8080/sqs", tls, &proxies).unwrap();
        assert!(straight.proxy.is_none() && straight.path == "/sqs", "NO_PROXY: straight to the endpoint");
    }

    /// Issue 34: whatever a server sends as its answer's head and body, the reader neither panics
    /// nor keeps more than `max` bytes of body: a clear error or the answer.
    #[test]
    fn hostile_answers_are_refused_or_read_within_their_cap() {
        let samples: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n{}",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        const MAX: usize = 64;
        crate::fuzz::run("wire_answers", 3000, |rng| {
            let sample = samples[rng.usize(0..samples.len())];
            let input = crate::fuzz::mutate(rng, sample);
            let mut buf = input.clone();
            let head = loop {
                match parse_head(&buf) {
                    Ok(Head::Informational(len)) => {
                        assert!(len > 0 && len <= buf.len(), "an informational head of {len} bytes in {}", buf.len());
                        buf.drain(..len);
                    }
                    Ok(Head::Complete(head)) => break head,
                    Ok(Head::Partial) | Err(_) => return,
                }
            };
            let (status, headers, _, head_len) = head;
            assert!(head_len <= buf.len());
            let Ok(framing) = framing(&headers, status) else { return };
            let rest = &buf[head_len..];
            match framing {
                Framing::Length(len) if len > MAX => {} // refused as TooLong before reading
                Framing::Chunked => {
                    let mut out = Vec::new();
                    let mut decoder = Chunked::default();
                    if let Ok(used) = decoder.feed(rest, &mut out, MAX) {
                        assert!(used <= rest.len());
                    }
                    assert!(out.len() <= MAX, "a chunked body past its cap: {} bytes", out.len());
                }
                _ => {}
            }
        });
    }
    use http_body_util::{BodyExt as _, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncBufReadExt as _;
    use tokio::net::TcpListener;

    /// What a scripted server does with each request of a connection.
    #[derive(Clone, Copy)]
    enum Then {
        /// Answers with the raw bytes and keeps the connection.
        Answer(&'static [u8]),
        /// Answers and closes.
        AnswerClose(&'static [u8]),
        /// Reads the request and closes without a word.
        Close,
        /// Answers with the request's body.
        Echo,
    }

    /// A loopback server whose n-th connection plays `script[n]` (the last one for the rest);
    /// counts connections.
    async fn server(script: Vec<Vec<Then>>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let plays = script[n.min(script.len() - 1)].clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    for then in plays {
                        // the request: a head, then content-length bytes
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        match then {
                            Then::Answer(raw) => stream.get_mut().write_all(raw).await.unwrap(),
                            Then::AnswerClose(raw) => {
                                stream.get_mut().write_all(raw).await.unwrap();
                                return;
                            }
                            Then::Close => return,
                            Then::Echo => {
                                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                                stream.get_mut().write_all(head.as_bytes()).await.unwrap();
                                stream.get_mut().write_all(&body).await.unwrap();
                            }
                        }
                    }
                    // keep the connection open until the client closes it
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                });
            }
        });
        (url, accepted)
    }

    fn wire(url: &str) -> Wire {
        Wire::new(url, crate::net::tls_config(None, None).unwrap()).unwrap()
    }

    const HEADERS: [(&str, &str); 2] =
        [("content-type", "application/x-amz-json-1.0"), ("x-amz-target", "AmazonSQS.ReceiveMessage")];

    /// hyper's client on the same request: status, the headers we read, body.
    async fn with_hyper(url: &str) -> Result<(u16, Option<String>, Bytes), String> {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut request = hyper::Request::post(url);
        for (k, v) in HEADERS {
            request = request.header(k, v);
        }
        let response = client
            .request(request.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let date = parts.headers.get("date").map(|v| v.to_str().unwrap().to_string());
        Ok((parts.status.as_u16(), date, body))
    }

    async fn with_wire(url: &str) -> Result<(u16, Option<String>, Bytes), String> {
        let a = wire(url).post(&HEADERS, b"{}", 1 << 20).await.map_err(|e| e.to_string())?;
        let date = a.headers.get("date").map(|v| v.to_str().unwrap().to_string());
        Ok((a.status.as_u16(), date, a.body))
    }

    /// The same raw answers through hyper's client and ours: the same status, `date` and body,
    /// or both refused.
    #[tokio::test]
    async fn reads_every_answer_as_hyper_reads_it() {
        let cases: [(&str, &'static [u8]); 12] = [
            ("content-length", b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 02:00:00 GMT\r\ncontent-length: 17\r\n\r\n{\"Messages\": [] }"),
            ("empty", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            ("chunked, extensions, trailers", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: t\r\n\r\n"),
            ("close-delimited", b"HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nto the end"),
            ("error answer", b"HTTP/1.1 400 Bad Request\r\nx-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender\r\ncontent-length: 2\r\n\r\n{}"),
            ("informational first", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            ("no content", b"HTTP/1.1 204 No Content\r\n\r\n"),
            ("bad status", b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n"),
            ("two lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc"),
            ("bad chunk size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            ("short body", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
            ("not http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        ];
        for (name, raw) in cases {
            let (url, _) = server(vec![vec![Then::AnswerClose(raw)]]).await;
            let theirs = with_hyper(&url).await;
            let ours = with_wire(&url).await;
            match (&theirs, &ours) {
                (Ok(t), Ok(o)) => assert_eq!(t, o, "{name}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{name}: hyper {theirs:?}, ours {ours:?}"),
            }
        }
    }

    /// Keep-alive: a second request goes on the first one's connection; an answer that says
    /// `connection: close`, or a peer that closed a pooled connection, costs a new one.
    #[tokio::test]
    async fn connections_are_kept_and_given_up_as_the_answers_say() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (url, accepted) = server(vec![vec![Then::Answer(OK), Then::Answer(OK)]]).await;
        let w = wire(&url);
        for _ in 0..2 {
            assert_eq!(&w.post(&HEADERS, b"{}", 100).await.unwrap().body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for both");
        assert_eq!(w.idle_len(), 1);

        const CLOSING: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (url, accepted) = server(vec![vec![Then::Answer(CLOSING)]]).await;
        let w = wire(&url);
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        assert_eq!(w.idle_len(), 0, "connection: close is not pooled");
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // the peer closes after answering (keep-alive said): the pool drops it before use
        let (url, accepted) = server(vec![vec![Then::AnswerClose(OK)]]).await;
        let w = wire(&url);
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A body in pieces arrives as the pieces put together: small ones gathered, large ones
    /// written as they are, the content-length their sum.
    #[tokio::test]
    async fn a_body_in_pieces_arrives_whole() {
        let (url, _) = server(vec![vec![Then::Echo, Then::Echo]]).await;
        let w = wire(&url);
        let big = vec![b'x'; 40 * 1024];
        let small: Vec<Vec<u8>> = (0..30).map(|i| format!("{{\"record\":{i}}}").into_bytes()).collect();
        let mut parts: Vec<&[u8]> = vec![b"{\"Records\":["];
        for (i, r) in small.iter().enumerate() {
            if i == 10 {
                parts.push(&big);
            }
            parts.push(r);
        }
        parts.push(b"]}");
        let whole: Vec<u8> = parts.concat();
        let answer = w.post_parts(&HEADERS, &parts, 1 << 20).await.unwrap();
        assert_eq!(answer.body.len(), whole.len());
        assert!(answer.body[..] == whole[..]);
        assert_eq!(&w.post(&HEADERS, b"one piece", 100).await.unwrap().body[..], b"one piece");
    }

    /// A pooled connection the peer closes without answering: the request goes once more on a
    /// new connection. A new connection that does the same is an error, not a loop.
    #[tokio::test]
    async fn a_pooled_connection_closed_unanswered_is_tried_once_more() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (url, accepted) = server(vec![vec![Then::Answer(OK), Then::Close], vec![Then::Answer(OK)]]).await;
        let w = wire(&url);
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        assert_eq!(&w.post(&HEADERS, b"{}", 100).await.unwrap().body[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the second request went again on a new connection");

        let (url, accepted) = server(vec![vec![Then::Close]]).await;
        let e = wire(&url).post(&HEADERS, b"{}", 100).await.unwrap_err();
        assert!(matches!(e, WireError::Broken(_)), "{e}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a new connection is not tried again");

        // sent once: the same pooled connection closed unanswered is an error
        let (url, accepted) = server(vec![vec![Then::Answer(OK), Then::Close], vec![Then::Answer(OK)]]).await;
        let w = wire(&url).sent_once();
        w.post(&HEADERS, b"{}", 100).await.unwrap();
        assert!(matches!(w.post(&HEADERS, b"{}", 100).await, Err(WireError::Broken(_))));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "not sent again");
    }

    /// The caller's limit holds whatever frames the body, before it is read.
    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_however_it_is_framed() {
        let cases: [&'static [u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffff\r\nabc",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789012345678901234567890123456789",
        ];
        for raw in cases {
            let (url, _) = server(vec![vec![Then::AnswerClose(raw)]]).await;
            let e = wire(&url).post(&HEADERS, b"{}", 16).await.unwrap_err();
            assert!(matches!(e, WireError::TooLong(16)), "{e}");
        }
    }

    /// Nobody listening: a connection error naming the address.
    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = wire(&format!("http://{addr}/")).post(&HEADERS, b"{}", 100).await.unwrap_err();
        assert!(matches!(&e, WireError::Connect(m) if m.contains(&addr.to_string())), "{e}");
    }

    /// What a waiting request holds besides its socket: the future's own state, kept small (the
    /// connect and TLS handshake are boxed while they run, the header slots live in a plain
    /// function). Before: 3 KiB of header slots and the handshake's state in every long poll.
    #[test]
    fn a_waiting_request_holds_under_a_kibibyte() {
        let w = wire("http://127.0.0.1:1/");
        let request = w.post(&HEADERS, b"{}", 1);
        assert!(std::mem::size_of_val(&request) < 1024, "{} bytes", std::mem::size_of_val(&request));
    }

    /// Hostile answers: random bytes and mutations of good answers through the head parser and
    /// the chunked decoder never panic, and the decoder never yields more than its limit.
    #[test]
    fn hostile_bytes_are_refused_or_read_within_the_limit() {
        let good: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(32);
        for round in 0..20_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect()
            } else {
                good[round % 4 / 2].to_vec()
            };
            for _ in 0..rng.usize(0..4) {
                if !bytes.is_empty() {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = *rng.choice(b"0123456789abcdefxz\r\n:; \t,".iter()).unwrap();
                }
            }
            let _ = parse_head(&bytes);
            if let Ok(Head::Complete((status, headers, _, len))) = parse_head(&bytes) {
                let _ = framing(&headers, status);
                let mut decoder = Chunked::default();
                let mut out = Vec::new();
                // fed in pieces, as reads bring them
                let rest = &bytes[len..];
                let mut at = 0;
                for cut in [rest.len() / 3, rest.len() / 2, rest.len()] {
                    match decoder.feed(&rest[at..cut.max(at)], &mut out, 8) {
                        Ok(used) => at += used,
                        Err(_) => break,
                    }
                }
                assert!(out.len() <= 8);
            }
        }
    }

    #[test]
    fn the_host_header_and_path_follow_the_url() {
        let w = wire("http://localhost:80/queue/");
        assert_eq!((w.authority.as_str(), w.path.as_str(), w.port), ("localhost", "/queue/", 80));
        let w = wire("https://sqs.us-east-1.amazonaws.com");
        assert_eq!((w.authority.as_str(), w.path.as_str(), w.port), ("sqs.us-east-1.amazonaws.com", "/", 443));
        let w = wire("http://[::1]:4566/");
        assert_eq!((w.authority.as_str(), w.host.as_str(), w.port), ("[::1]:4566", "::1", 4566));
        assert!(Wire::new("ftp://x/", crate::net::tls_config(None, None).unwrap()).is_err());
    }
}
