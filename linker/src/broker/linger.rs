//! Batching reads from the broker in the kernel (`batch_delay`).
//!
//! Mosquitto with `set_tcp_nodelay true` writes each message to the agent
//! as it comes, so at a moderate rate every message is a wake-up of the
//! agent, a read, a QUIC packet, a wake-up of the peer and a write to its
//! broker: ~15 µs of CPU per message and agent at 3,800 msgs/s against
//! ~1 µs flat out. Sleeping in the task does not help: a readable socket
//! wakes the thread whether or not the task reads it.
//!
//! The linger asks the kernel instead: after a read, the socket's receive
//! low-water mark (`SO_RCVLOWAT`) goes up to [`LOWAT`] bytes, so the
//! socket stays quiet while messages gather, for at most the delay; then
//! the mark goes back to one byte (which wakes the socket at once when
//! anything is there). Whatever gathered is read, handed to the core and
//! sent on as one batch. An idle connection costs nothing (no periodic
//! tick): the first message after a quiet spell is read at once, and only
//! the ones that follow it within the delay wait.

use std::time::Duration;

use tokio::time::Instant;

/// Low-water mark while lingering: a read this large wakes the socket
/// before the delay is out (64 KB reads; a quarter of one).
pub const LOWAT: usize = 16 * 1024;

/// The linger of one connection.
#[derive(Debug)]
pub struct ReadLinger {
    delay: Duration,
    /// When the mark goes back down (`None`: it is down).
    until: Option<Instant>,
}

impl ReadLinger {
    /// A linger of `delay` (zero: none, every byte wakes the socket).
    pub fn new(delay: Duration) -> Self {
        Self { delay, until: None }
    }

    /// After a read: raise the mark and start the delay (nothing, not
    /// even a clock read, without a linger: this runs on every read).
    pub fn read(&mut self, sock: &socket2::Socket) {
        if self.delay.is_zero() {
            return;
        }
        if self.until.is_none() {
            set_lowat(sock, LOWAT);
        }
        self.until = Some(Instant::now() + self.delay);
    }

    /// Whether the mark is up (the caller waits for [`Self::expired`]).
    pub fn lingering(&self) -> bool {
        self.until.is_some()
    }

    /// Resolves when the delay is out (never while not lingering).
    pub async fn expired(&self) {
        match self.until {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    }

    /// The delay is out: the mark goes back to one byte, which makes the
    /// socket readable at once if anything gathered.
    pub fn expire(&mut self, sock: &socket2::Socket) {
        self.until = None;
        set_lowat(sock, 1);
    }
}

/// Set the receive low-water mark. A failure only loses the batching:
/// logged, not fatal.
fn set_lowat(sock: &socket2::Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is an open socket owned by `sock` for the call;
    // the option value is a live `c_int` whose size is passed with it.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_RCVLOWAT");
    }
}
