//! The environment's egress proxies for the service's hyper clients (the worker's health check,
//! the OTLP exporter), as the lean client ([`crate::aws::wire`]) and the AWS SDK take them:
//! `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY` (lower case too), read by hyper-util's
//! own matcher. An `https://` destination goes through a `CONNECT` tunnel (hyper-util's
//! `Tunnel`, with the proxy URL's credentials), an `http://` one to the proxy in absolute form.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connector for `http://` and `https://` that goes through the environment's proxy when it
/// names one for the destination.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpsConnector<HttpConnector>,
    tcp: HttpConnector,
    tls: rustls::ClientConfig,
    proxies: &'static Matcher,
}

impl std::fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConnector").finish_non_exhaustive()
    }
}

impl ProxyConnector {
    /// `tcp` and `tls` as for a direct connection; the proxies from the environment.
    pub fn new(tcp: HttpConnector, tls: rustls::ClientConfig) -> Self {
        let direct = https(tls.clone(), tcp.clone());
        ProxyConnector { direct, tcp, tls, proxies: environment() }
    }
}

fn https<C>(tls: rustls::ClientConfig, connector: C) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector)
}

impl Service<Uri> for ProxyConnector {
    type Response = Proxied;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Proxied, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.proxies.intercept(&dst) {
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { Ok(Proxied { inner: direct.call(dst).await?, forward: false }) })
            }
            Some(proxy) if dst.scheme_str() == Some("https") => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.tcp.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let mut through = https(self.tls.clone(), tunnel);
                Box::pin(async move { Ok(Proxied { inner: through.call(dst).await?, forward: false }) })
            }
            Some(proxy) => {
                // the client writes absolute-form requests to a connection marked as a proxy's
                let (mut tcp, at) = (self.tcp.clone(), proxy.uri().clone());
                Box::pin(async move {
                    let stream = tcp.call(at).await?;
                    Ok(Proxied { inner: MaybeHttpsStream::Http(stream), forward: true })
                })
            }
        }
    }
}

/// The `Proxy-Authorization` an `http://` request to `uri` carries through the environment's
/// proxy, when the proxy URL has credentials (an `https://` destination's go in the tunnel's
/// `CONNECT`, which [`ProxyConnector`] sends).
pub fn forward_authorization(uri: &Uri) -> Option<hyper::header::HeaderValue> {
    if uri.scheme_str() != Some("http") {
        return None;
    }
    environment().intercept(uri)?.basic_auth().cloned()
}

/// The environment's proxies, read once for the process: every client of the service (the lean
/// client, [`ProxyConnector`], [`forward_authorization`]) asks the same matcher.
pub fn environment() -> &'static Matcher {
    static PROXIES: std::sync::OnceLock<Matcher> = std::sync::OnceLock::new();
    PROXIES.get_or_init(Matcher::from_env)
}

/// A connection, straight or through a proxy; `forward`: to a proxy that takes absolute-form
/// requests.
pub struct Proxied {
    inner: MaybeHttpsStream<TokioIo<TcpStream>>,
    forward: bool,
}

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        self.inner.connected().proxy(self.forward)
    }
}

impl hyper::rt::Read for Proxied {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Proxied {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}
