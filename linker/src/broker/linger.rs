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
//! the ones that follow it within the delay wait. The delay is kept by a
//! [`PreciseTimer`] (a `timerfd`), so it can be well under a millisecond
//! (tokio's own timer counts whole milliseconds: 200 µs would wait 1-2 ms).

use std::time::Duration;

use crate::timer::PreciseTimer;

/// Low-water mark while lingering: a read this large wakes the socket
/// before the delay is out (64 KB reads; a quarter of one).
pub const LOWAT: usize = 16 * 1024;

/// What a read of the gathered bytes found ([`ReadLinger::take`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered {
    /// This many bytes, appended to the buffer.
    Bytes(usize),
    /// Nothing: the mark is down again, the linger over.
    Nothing,
    /// The broker closed the connection.
    Closed,
}

/// The linger of one connection.
#[derive(Debug)]
pub struct ReadLinger {
    delay: Duration,
    /// Armed while lingering: when what gathered is read.
    until: PreciseTimer,
    /// The previous read.
    last: Option<std::time::Instant>,
    /// Whether the mark is at [`LOWAT`] (else one byte).
    mark_up: bool,
    /// Where [`Self::take`] reads (allocated on first use).
    scratch: Vec<u8>,
}

impl ReadLinger {
    /// A linger of `delay` (zero: none, every byte wakes the socket).
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            until: PreciseTimer::new(),
            last: None,
            mark_up: false,
            scratch: Vec::new(),
        }
    }

    /// After a read of `packets` whole packets: raise the mark and start
    /// the delay, if traffic is dense enough that lingering gathers
    /// something: the read held more than one packet, or came within the
    /// delay of the previous one. Sparser traffic is read at once, each
    /// message as it comes (a linger would only add a timer's wake-up per
    /// message: 40 -> 55 µs per message at 3,800 msgs/s with 200 µs).
    /// Nothing, not even a clock read, without a linger: this runs on
    /// every read.
    pub fn read(&mut self, sock: &socket2::Socket, packets: usize) {
        if self.delay.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        let dense = packets > 1 || self.last.is_some_and(|t| now - t < self.delay);
        self.last = Some(now);
        if !dense {
            self.expire(sock);
            return;
        }
        if !self.mark_up {
            set_lowat(sock, LOWAT);
            self.mark_up = true;
        }
        self.until.arm(self.delay);
    }

    /// Whether a delay is running (the caller waits for [`Self::expired`]).
    pub fn lingering(&self) -> bool {
        self.until.armed()
    }

    /// Resolves when the delay is out (never while not lingering).
    pub async fn expired(&mut self) {
        self.until.fired().await;
    }

    /// The delay is out, or lingering ends: the mark goes back to one
    /// byte, which makes the socket readable at once if anything gathered.
    pub fn expire(&mut self, sock: &socket2::Socket) {
        self.until.disarm();
        if self.mark_up {
            set_lowat(sock, 1);
            self.mark_up = false;
        }
    }

    /// The delay is out: read what gathered straight from the socket (a
    /// plain TCP one: a TLS stream's bytes must go through its session),
    /// into `buf`. A non-blocking read returns what is there even below
    /// the mark, so the mark stays up and the socket is not polled again:
    /// per batch, two `setsockopt`s and a turn of the event loop fewer
    /// than lowering the mark and waiting for the socket to turn readable.
    /// Nothing there: the mark goes down ([`Self::expire`]).
    pub fn take(
        &mut self,
        sock: &socket2::Socket,
        buf: &mut bytes::BytesMut,
    ) -> std::io::Result<Gathered> {
        use std::io::Read as _;
        if self.scratch.is_empty() {
            self.scratch = vec![0; 64 * 1024];
        }
        let mut reader: &socket2::Socket = sock;
        match reader.read(&mut self.scratch) {
            Ok(0) => Ok(Gathered::Closed),
            Ok(n) => {
                buf.extend_from_slice(&self.scratch[..n]);
                Ok(Gathered::Bytes(n))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                self.expire(sock);
                Ok(Gathered::Nothing)
            }
            Err(e) => Err(e),
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// A connected pair: the agent's end (and a duplicate of its
    /// descriptor, as the session has), and the broker's end.
    async fn pair() -> (
        socket2::Socket,
        tokio::net::TcpStream,
        tokio::net::TcpStream,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        let sock = socket2::SockRef::from(&c).try_clone().unwrap();
        (sock, c, s)
    }

    async fn socket() -> (socket2::Socket, tokio::net::TcpStream) {
        let (sock, c, _) = pair().await;
        (sock, c)
    }

    #[tokio::test]
    async fn take_reads_what_gathered_below_the_mark_then_ends_the_linger() {
        use tokio::io::AsyncWriteExt as _;
        let (sock, _c, mut broker) = pair().await;
        let mut l = ReadLinger::new(Duration::from_secs(3600));
        l.read(&sock, 2);
        assert!(l.lingering());
        // Far below the mark: the socket never turns readable, yet the
        // gathered bytes are read.
        broker.write_all(b"0123456789").await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while buf.len() < 10 {
            assert!(std::time::Instant::now() < deadline, "nothing gathered");
            match l.take(&sock, &mut buf).unwrap() {
                Gathered::Bytes(_) => {}
                Gathered::Nothing => {
                    // Not there yet: back to lingering, as after a read.
                    l.read(&sock, 2);
                    tokio::task::yield_now().await;
                }
                Gathered::Closed => panic!("closed"),
            }
        }
        assert_eq!(&buf[..], b"0123456789");
        // Nothing more: the linger ends, the mark is down.
        assert_eq!(l.take(&sock, &mut buf).unwrap(), Gathered::Nothing);
        assert!(!l.lingering());
        assert!(!l.mark_up);
        drop(broker);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline, "no end of stream");
            if l.take(&sock, &mut buf).unwrap() == Gathered::Closed {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn lingers_only_where_traffic_is_dense() {
        let (sock, _c) = socket().await;
        // Within an hour of each other: dense from the second read on.
        let mut l = ReadLinger::new(Duration::from_secs(3600));
        l.read(&sock, 1);
        assert!(
            !l.lingering(),
            "the first message after a quiet spell is read at once"
        );
        l.read(&sock, 1);
        assert!(l.lingering());
        l.expire(&sock);
        assert!(!l.lingering());
        // A read that gathered several packets: dense.
        let mut l = ReadLinger::new(Duration::from_nanos(1));
        l.read(&sock, 1);
        l.read(&sock, 1);
        assert!(!l.lingering(), "reads further apart than the delay: sparse");
        l.read(&sock, 3);
        assert!(l.lingering());
        // No delay: never.
        let mut l = ReadLinger::new(Duration::ZERO);
        l.read(&sock, 5);
        assert!(!l.lingering());
    }
}
