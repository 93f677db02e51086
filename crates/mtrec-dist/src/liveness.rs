//! Which rank was lost, and on which host: a TCP link beside MPI between rank 0 and every other
//! rank, on which both ends send a byte a second.
//!
//! MPI cannot say that a peer is gone: a collective waiting on a dead node waits, and the
//! [`crate::Watchdog`] can only say that no progress was made. The link can:
//! - a process that dies (an error, a signal, SIGKILL) has its connections closed by its kernel,
//!   so the other end reads end-of-file at once;
//! - a node that is cut off or hung sends nothing: after the peer timeout (`dist.timeout_s`)
//!   without a byte, the other end declares it unreachable.
//!
//! Rank 0 watches every rank; the others watch rank 0 (a star: one link per rank). A rank that
//! sees a loss waits [`GATHER`] for the losses that come with it (a node's ranks die together),
//! prints them with their hosts, and ends the job with [`EXIT_PEER_LOST`]. A rank that ends on
//! purpose says so first: [`BYE`] when its command succeeded, [`FAILING`] when it is ending the
//! job with its own message, so neither reads as a loss. Rank 0's addresses go to the others
//! over MPI; a rank on rank 0's host connects over loopback, the others to rank 0's addresses,
//! those inside `MTREC_IFACE` (a CIDR) first. A rank that cannot connect says so and goes on
//! without the link (the watchdog still ends a stalled job).
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exit code of a rank that saw another rank die or become unreachable (retryable).
pub const EXIT_PEER_LOST: i32 = 71;

/// One byte a second in each direction.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// After the first loss, how long to gather the losses that come with it before reporting.
const GATHER: Duration = Duration::from_millis(300);
/// How long a rank tries each of rank 0's addresses.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long rank 0 accepts the other ranks' links.
const ACCEPT_FOR: Duration = Duration::from_secs(120);
/// Peer timeout until a command sets `dist.timeout_s`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const BEAT: u8 = b'.';
/// "My command succeeded; my link closes now."
const BYE: u8 = b'B';
/// "I am ending the job with my own message."
const FAILING: u8 = b'F';

/// Where rank 0 writes the hosts it lost ([`record_losses_in`]), when a command asked for it.
static LOSS_RECORD: OnceLock<std::path::PathBuf> = OnceLock::new();

/// From now on, rank 0 writes the hosts of the ranks it loses to `path`, one per line, before it
/// ends the job: a launcher that restarts the job (`launch/slurm/mtrec.sbatch`) leaves those
/// hosts out. Only rank 0's view is written: in a partition each side sees the other lost.
pub fn record_losses_in(path: std::path::PathBuf) {
    let _ = LOSS_RECORD.set(path);
}

/// Writes the lost ranks' hosts to the loss record (rank 0, best effort: the job ends anyway).
fn write_loss_record(lost: &[(usize, Loss)], hosts: &[String]) {
    let Some(path) = LOSS_RECORD.get().filter(|_| crate::job::rank() == 0) else { return };
    let mut lost_hosts: Vec<&str> =
        lost.iter().filter_map(|(rank, _)| hosts.get(*rank).map(String::as_str)).collect();
    lost_hosts.sort_unstable();
    lost_hosts.dedup();
    let tmp = path.with_extension("tmp");
    let text: String = lost_hosts.iter().map(|h| format!("{h}\n")).collect();
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The write ends of this rank's links, for [`announce`] (the abort path has no other handle).
static LINKS: OnceLock<Mutex<Vec<TcpStream>>> = OnceLock::new();

/// Sends `byte` on every link of this rank (best effort, never blocks for long).
fn announce(byte: u8) {
    if let Some(links) = LINKS.get() {
        for link in links.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            let _ = link.write_all(&[byte]);
        }
    }
}

/// Adds a link to those [`announce`] writes to.
fn register_link(stream: &TcpStream) {
    if let Ok(clone) = stream.try_clone() {
        let links = LINKS.get_or_init(|| Mutex::new(Vec::new()));
        links.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
    }
}

/// Called by [`crate::abort_job`]: this rank ends the job with its own message, its peers must
/// not report it as lost.
pub(crate) fn announce_failing() {
    announce(FAILING);
}

/// Where rank 0's link listens: its port and its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendezvous {
    pub port: u16,
    pub addresses: Vec<Ipv4Addr>,
}

impl Rendezvous {
    /// `port addr addr ...`, for the broadcast from rank 0.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = self.port.to_string();
        for a in &self.addresses {
            text.push(' ');
            text.push_str(&a.to_string());
        }
        text.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Rendezvous> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split_whitespace();
        let port = words.next()?.parse().ok()?;
        let addresses = words.map(str::parse).collect::<Result<_, _>>().ok()?;
        Some(Rendezvous { port, addresses })
    }

    /// The addresses to try from a rank on `host`: loopback on rank 0's own host; else those in
    /// `iface` (a CIDR such as `10.1.2.0/24`) first, then the others, never loopback.
    pub fn candidates(&self, same_host: bool, iface: Option<&str>) -> Vec<SocketAddr> {
        if same_host {
            return vec![SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))];
        }
        let subnet = iface.and_then(parse_cidr);
        let inside = |a: &Ipv4Addr| subnet.is_some_and(|(net, bits)| in_subnet(*a, net, bits));
        let mut remote: Vec<Ipv4Addr> = self.addresses.iter().copied().filter(|a| !a.is_loopback()).collect();
        remote.sort_by_key(|a| !inside(a)); // stable: inside the subnet first
        remote.into_iter().map(|a| SocketAddr::from((a, self.port))).collect()
    }
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u32)> {
    let (net, bits) = text.split_once('/')?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    Some((net.parse().ok()?, bits))
}

fn in_subnet(address: Ipv4Addr, net: Ipv4Addr, bits: u32) -> bool {
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    u32::from(address) & mask == u32::from(net) & mask
}

/// This machine's IPv4 addresses (every interface that is up).
pub(crate) fn local_addresses() -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that freeifaddrs releases; each entry is read while it lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            let up = (*entry).ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let v4 = &*(addr as *const libc::sockaddr_in);
                found.push(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)));
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// One watched link.
struct Peer {
    rank: usize,
    stream: TcpStream,
    last_heard: Instant,
    /// Said goodbye or failing: its link closing is expected.
    quiet: bool,
}

/// Why a peer counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    Closed,
    Silent,
}

/// The running link of this rank; [`Liveness::finish`] says goodbye and stops it.
pub(crate) struct Liveness {
    finished: Arc<AtomicBool>,
    timeout_ms: Arc<AtomicU64>,
}

impl Liveness {
    /// Rank 0's side: listens on every address; returns the rendezvous to broadcast.
    pub fn listen() -> std::io::Result<(TcpListener, Rendezvous)> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let port = listener.local_addr()?.port();
        Ok((listener, Rendezvous { port, addresses: local_addresses() }))
    }

    /// Rank 0 watches the ranks that connect to `listener`.
    pub fn watch_all(listener: TcpListener, hosts: Arc<Vec<String>>) -> Liveness {
        Self::spawn(Vec::new(), Some(listener), hosts)
    }

    /// Rank `rank` connects to rank 0 and watches it; an error saying what was tried when no
    /// address of rank 0 answers.
    pub fn watch_rank_zero(
        rank: usize,
        rendezvous: &Rendezvous,
        hosts: Arc<Vec<String>>,
    ) -> Result<Liveness, String> {
        let same_host = hosts.first() == hosts.get(rank);
        let iface = std::env::var("MTREC_IFACE").ok();
        let candidates = rendezvous.candidates(same_host, iface.as_deref());
        let mut tried = Vec::new();
        for address in &candidates {
            match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
                Ok(mut stream) => {
                    stream.write_all(&(rank as u32).to_le_bytes()).map_err(|e| format!("{address}: {e}"))?;
                    let peer = Peer { rank: 0, stream, last_heard: Instant::now(), quiet: false };
                    return Ok(Self::spawn(vec![peer], None, hosts));
                }
                Err(e) => tried.push(format!("{address}: {e}")),
            }
        }
        Err(format!(
            "cannot reach rank 0's liveness link ({}); a lost peer will be seen by the watchdog only \
             (after dist.timeout_s)",
            if tried.is_empty() { "rank 0 has no address to try".into() } else { tried.join(", ") }
        ))
    }

    /// From now on a peer silent for `timeout` is lost.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// This rank's command succeeded: goodbye on every link, and stop watching.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        announce(BYE);
    }

    fn spawn(peers: Vec<Peer>, listener: Option<TcpListener>, hosts: Arc<Vec<String>>) -> Liveness {
        let finished = Arc::new(AtomicBool::new(false));
        let timeout_ms = Arc::new(AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64));
        for peer in &peers {
            register_link(&peer.stream);
        }
        let watch = Watch {
            peers,
            listener,
            hosts,
            finished: Arc::clone(&finished),
            timeout_ms: Arc::clone(&timeout_ms),
        };
        std::thread::Builder::new()
            .name("liveness".into())
            .spawn(move || watch.run())
            .expect("a thread for the liveness link");
        Liveness { finished, timeout_ms }
    }
}

/// The watching thread's state.
struct Watch {
    peers: Vec<Peer>,
    listener: Option<TcpListener>,
    hosts: Arc<Vec<String>>,
    finished: Arc<AtomicBool>,
    timeout_ms: Arc<AtomicU64>,
}

impl Watch {
    fn run(mut self) {
        let started = Instant::now();
        if let Some(listener) = &self.listener {
            let _ = listener.set_nonblocking(true);
        }
        for peer in &self.peers {
            let _ = peer.stream.set_nonblocking(true);
        }
        let mut last_beat = Instant::now() - BEAT_EVERY;
        let mut lost: Vec<(usize, Loss)> = Vec::new();
        let mut first_loss: Option<Instant> = None;
        while !self.finished.load(Ordering::SeqCst) {
            if self.listener.is_some() && started.elapsed() > ACCEPT_FOR {
                self.listener = None;
            }
            self.accept();
            if last_beat.elapsed() >= BEAT_EVERY {
                announce(BEAT);
                last_beat = Instant::now();
            }
            let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
            for peer in self.peers.iter_mut().filter(|p| !p.quiet) {
                if let Some(loss) = hear(peer, timeout) {
                    peer.quiet = true;
                    lost.push((peer.rank, loss));
                    first_loss.get_or_insert_with(Instant::now);
                }
            }
            if first_loss.is_some_and(|t| t.elapsed() >= GATHER) && !self.finished.load(Ordering::SeqCst) {
                crate::say(&format!(
                    "error: {}: lost {}; ending the job",
                    crate::job::who(),
                    describe(&lost, &self.hosts, timeout)
                ));
                write_loss_record(&lost, &self.hosts);
                crate::abort_job(EXIT_PEER_LOST);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rank 0: takes the links of ranks that connected (each first sends its rank).
    fn accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        while let Ok((mut stream, _)) = listener.accept() {
            let mut rank = [0u8; 4];
            let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
            if stream.read_exact(&mut rank).is_err() {
                continue;
            }
            let _ = stream.set_nonblocking(true);
            register_link(&stream);
            let rank = u32::from_le_bytes(rank) as usize;
            self.peers.push(Peer { rank, stream, last_heard: Instant::now(), quiet: false });
        }
    }
}

/// Reads what `peer` sent; the loss, if its link closed unannounced or it was silent too long.
fn hear(peer: &mut Peer, timeout: Duration) -> Option<Loss> {
    let mut buffer = [0u8; 64];
    loop {
        match peer.stream.read(&mut buffer) {
            Ok(0) => return Some(Loss::Closed),
            Ok(n) => {
                peer.last_heard = Instant::now();
                if buffer[..n].iter().any(|b| *b == BYE || *b == FAILING) {
                    peer.quiet = true;
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Some(Loss::Closed),
        }
    }
    (peer.last_heard.elapsed() > timeout).then_some(Loss::Silent)
}

/// `rank 2 on node2 and rank 3 on node2 (their links closed: the processes died)`, one clause
/// per cause.
fn describe(lost: &[(usize, Loss)], hosts: &[String], timeout: Duration) -> String {
    let mut clauses = Vec::new();
    for (cause, why) in [
        (Loss::Closed, "link closed without a word: the process died or was killed".to_string()),
        (Loss::Silent, format!("no heartbeat for {} s: the host is unreachable or hung", timeout.as_secs())),
    ] {
        let ranks: Vec<String> = lost
            .iter()
            .filter(|(_, c)| *c == cause)
            .map(|(r, _)| format!("rank {r} on {}", hosts.get(*r).map_or("?", String::as_str)))
            .collect();
        if !ranks.is_empty() {
            clauses.push(format!("{} ({why})", ranks.join(", ")));
        }
    }
    clauses.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_round_trips_and_orders_candidates() {
        let r = Rendezvous {
            port: 4242,
            addresses: vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(10, 213, 0, 2)],
        };
        assert_eq!(Rendezvous::decode(&r.encode()), Some(r.clone()));
        let same = r.candidates(true, None);
        assert_eq!(same, vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 4242))]);
        let remote = r.candidates(false, Some("10.213.0.0/24"));
        assert_eq!(remote[0], SocketAddr::from((Ipv4Addr::new(10, 213, 0, 2), 4242)));
        assert_eq!(remote.len(), 2, "never loopback to another host: {remote:?}");
        assert!(in_subnet(Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 0, 0), 16));
        assert!(!in_subnet(Ipv4Addr::new(10, 2, 2, 3), Ipv4Addr::new(10, 1, 0, 0), 16));
        assert_eq!(parse_cidr("eth0"), None);
    }

    #[test]
    fn losses_are_told_by_host_and_cause() {
        let hosts = vec!["node1".to_string(), "node1".into(), "node2".into(), "node2".into()];
        let text = describe(
            &[(2, Loss::Closed), (3, Loss::Closed), (1, Loss::Silent)],
            &hosts,
            Duration::from_secs(20),
        );
        assert_eq!(
            text,
            "rank 2 on node2, rank 3 on node2 (link closed without a word: the process died or was \
             killed); rank 1 on node1 (no heartbeat for 20 s: the host is unreachable or hung)"
        );
    }

    /// A link whose far end says goodbye is not a loss; one that closes without a word is, at once.
    #[test]
    fn a_goodbye_is_not_a_loss_but_a_silent_close_is() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        for (said, expected) in
            [(Some(BYE), None), (None, Some(Loss::Closed)), (Some(BEAT), Some(Loss::Closed))]
        {
            let mut far = TcpStream::connect(address).unwrap();
            let (near, _) = listener.accept().unwrap();
            near.set_nonblocking(true).unwrap();
            let mut peer = Peer { rank: 1, stream: near, last_heard: Instant::now(), quiet: false };
            if let Some(byte) = said {
                far.write_all(&[byte]).unwrap();
            }
            drop(far);
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(hear(&mut peer, Duration::from_secs(60)), expected, "after {said:?}");
        }
        // Silence past the timeout, with the link open.
        let _far = TcpStream::connect(address).unwrap();
        let (near, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        let mut peer = Peer { rank: 1, stream: near, last_heard: Instant::now(), quiet: false };
        assert_eq!(hear(&mut peer, Duration::from_secs(60)), None);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(hear(&mut peer, Duration::from_millis(100)), Some(Loss::Silent));
    }
}
