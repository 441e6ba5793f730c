//! A fault-injecting TCP proxy for the tests: it sits between the service and a real server (the
//! SQS emulator, an HTTP worker) and, on command, passes traffic, delays it, resets connections,
//! accepts and hangs, or cuts everything (connections refused, open ones dropped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything.
    Pass,
    /// Delay every chunk, both ways.
    Latency(Duration),
    /// Accept, then reset (RST) at once; open connections are reset too.
    Reset,
    /// Accept and read, never answer; open connections stall too.
    Hang,
    /// Nobody listens (connection refused); open connections are dropped.
    Cut,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    fault: watch::Sender<Fault>,
    /// Connections accepted, for the report.
    pub accepted: Arc<Mutex<u64>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port` or a URL).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let upstream = upstream.split('/').next().unwrap().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, watcher) = watch::channel(Fault::Pass);
        let accepted = Arc::new(Mutex::new(0));
        tokio::spawn(run(listener, addr, upstream, watcher, accepted.clone()));
        FaultProxy { url: format!("http://{addr}"), fault, accepted }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

/// Accepts while the fault allows it; a `Cut` closes the listener and binds the port again after.
async fn run(
    listener: TcpListener,
    addr: std::net::SocketAddr,
    upstream: String,
    mut fault: watch::Receiver<Fault>,
    accepted: Arc<Mutex<u64>>,
) {
    let mut listener = Some(listener);
    loop {
        let current = *fault.borrow_and_update();
        if current == Fault::Cut {
            listener = None;
            let _ = fault.changed().await;
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => {
                // the port is ours: bind it again (SO_REUSEADDR is set by tokio on Unix)
                let mut tries = 0;
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => break listener.insert(l),
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 100, "cannot bind {addr} again: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        };
        tokio::select! {
            r = l.accept() => {
                let Ok((client, _)) = r else { continue };
                *accepted.lock().unwrap() += 1;
                tokio::spawn(connection(client, upstream.clone(), fault.clone()));
            }
            _ = fault.changed() => {}
        }
    }
}

/// One proxied connection, under the fault of the moment.
async fn connection(client: TcpStream, upstream: String, mut fault: watch::Receiver<Fault>) {
    let current = *fault.borrow_and_update();
    match current {
        Fault::Reset => return reset(client),
        Fault::Hang => return hang(client, fault).await,
        Fault::Cut => return,
        Fault::Pass | Fault::Latency(_) => {}
    }
    let Ok(server) = TcpStream::connect(&upstream).await else { return reset(client) };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, fault.clone());
    let down = pump(server_read, client_write, fault.clone());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        // a fault that breaks open connections
        _ = async {
            loop {
                if fault.changed().await.is_err() { return; }
                if matches!(*fault.borrow(), Fault::Reset | Fault::Cut) { return; }
            }
        } => {}
    }
}

/// Copies one direction, delaying each chunk under `Latency` and stalling under `Hang`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let current = *fault.borrow();
            match current {
                Fault::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Hang => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Closes with an RST (SO_LINGER 0).
fn reset(stream: TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and discards until the fault changes to something that is not `Hang`, then drops.
async fn hang(mut stream: TcpStream, mut fault: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            c = fault.changed() => if c.is_err() || *fault.borrow() != Fault::Hang { return },
        }
    }
}
