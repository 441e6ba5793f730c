//! systemd's readiness protocol (`Type=notify`): when `NOTIFY_SOCKET` is set, sqs-poller sends
//! `READY=1` once every pipeline has found its queue, `RELOADING=1` … `READY=1` around a
//! configuration reload, and `STOPPING=1` when the drain begins. Without `NOTIFY_SOCKET` (ECS,
//! a terminal) it does nothing.

/// Sends one notification (`READY=1`, …) to systemd; false when there is no socket or the send
/// failed (logged at debug: systemd may simply not be listening).
pub fn notify(state: &str) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            // an abstract socket
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        let sent = addr.and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            socket.send_to_addr(state.as_bytes(), &addr)
        });
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(socket = %path, error = %e, "cannot notify systemd");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = state;
        false
    }
}
