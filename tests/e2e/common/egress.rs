//! An egress proxy on loopback, as networks that leave only through one have: `CONNECT` tunnels
//! (for `https://` destinations) and requests in absolute form (for `http://` ones), each counted
//! by destination. An absolute-form request is forwarded with `connection: close`, so each
//! connection carries one request and every request is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What went through the proxy.
#[derive(Default, Clone, Debug)]
pub struct Seen {
    /// `CONNECT` tunnels opened, by `host:port`.
    pub tunnels: HashMap<String, usize>,
    /// Requests forwarded, as (`host:port`, `x-amz-target` or the path).
    pub forwarded: Vec<(String, String)>,
    /// Tunnels and requests that came without `proxy-authorization`, as (`host:port`, what).
    pub without_credentials: Vec<(String, String)>,
}

pub struct EgressProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl EgressProxy {
    pub async fn start() -> EgressProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, log.clone()));
            }
        });
        EgressProxy { url, seen }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut client: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 || client.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let credentials = head.to_ascii_lowercase().contains("\r\nproxy-authorization: basic ");
    if method == "CONNECT" {
        if !credentials {
            seen.lock().unwrap().without_credentials.push((target.to_string(), "CONNECT".into()));
        }
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            return;
        };
        *seen.lock().unwrap().tunnels.entry(target.to_string()).or_default() += 1;
        if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    let Some(rest) = target.strip_prefix("http://") else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let Ok(mut upstream) = TcpStream::connect(authority).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let mut forwarded = format!("{method} {path} HTTP/1.1\r\n");
    let mut what = path.to_string();
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if name == "x-amz-target" {
            what = line.split_once(':').map_or("", |(_, v)| v.trim()).to_string();
        }
        if !["connection", "proxy-connection", "proxy-authorization", "keep-alive"].contains(&name.as_str()) {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    {
        let mut log = seen.lock().unwrap();
        if !credentials {
            log.without_credentials.push((authority.to_string(), what.clone()));
        }
        log.forwarded.push((authority.to_string(), what));
    }
    if upstream.write_all(forwarded.as_bytes()).await.is_err() || upstream.write_all(&buf[head_len..]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
