//! A UDP relay that can cut a link between two live agents, for the demo
//! and the tests.

/// A UDP relay between two agents (the dialling one talks to the relay,
/// the relay to the other's QUIC port): `cut` drops every datagram both
/// ways while both agents live, `restore` lets them through again.
/// `tc netem` is not available on every machine; this is how the demo and
/// the tests cut a link.
#[derive(Debug)]
pub struct Relay {
    /// The port the dialling agent sends to.
    pub port: u16,
    /// Datagrams pass while this is false.
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The relay task.
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `127.0.0.1:target`.
    pub async fn start(target: std::net::SocketAddr) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(target).await?;
        let port = front.local_addr()?.port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client: Option<std::net::SocketAddr> = None;
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !flag.load(Ordering::Relaxed) {
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        if let Some(c) = client && !flag.load(Ordering::Relaxed) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Ok(Relay { port, cut, task })
    }

    /// Drop everything from now on.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Let datagrams through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
