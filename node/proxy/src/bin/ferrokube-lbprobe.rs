//! `ferrokube-lbprobe`: a lab client for the socket load balancer. It joins a cgroup and a
//! network namespace, then makes COUNT requests to ADDR and prints one line per request:
//! `ok <peer as the socket reports it> <reply>` or `err <kind>`.
//!
//! ```text
//! ferrokube-lbprobe --cgroup DIR --netns /run/netns/NAME tcp|udp|udp-connected ADDR COUNT
//! ferrokube-lbprobe --cgroup DIR --netns /run/netns/NAME tcp-hold|udp-hold ADDR SECONDS
//! ferrokube-lbprobe --cgroup DIR --netns /run/netns/NAME bench-short|bench-rr ADDR[,ADDR..] SECONDS THREADS
//! ```
//! `tcp`: connect, send, read the reply, `getpeername`. `udp`: `sendto`, `recvfrom` (the
//! peer is the reply's source). `udp-connected`: `connect`, `getpeername`, send, receive.
//! `tcp-hold`, `udp-hold`: one connected socket, one exchange (`ok ...`), then an exchange
//! every 50 ms on the same socket until one fails (`err <kind>`) or SECONDS pass (`held`);
//! used to see established sockets destroyed when their backend goes.
//! `bench-short`: THREADS threads each connect, exchange one request and close, over and
//! over; `bench-rr`: each thread exchanges on one connection; both for SECONDS, cycling
//! through the addresses, then print `ops N errors E` (the dataplane benchmark's client).
//! Used by the dataplane tests and the lab.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut cgroup, mut netns, mut rest) = (None, None, Vec::new());
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cgroup" => cgroup = it.next().map(PathBuf::from),
            "--netns" => netns = it.next().map(PathBuf::from),
            _ => rest.push(arg),
        }
    }
    if let [mode, addrs, seconds, threads] = rest.as_slice()
        && mode.starts_with("bench-")
    {
        let addrs: Vec<SocketAddr> = addrs
            .split(',')
            .map(|a| a.parse().context("ADDR"))
            .collect::<Result<_>>()?;
        let seconds: u64 = seconds.parse().context("SECONDS")?;
        let threads: usize = threads.parse().context("THREADS")?;
        if let Some(cgroup) = &cgroup {
            std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
                .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
        }
        if let Some(netns) = &netns {
            enter_netns(netns)?;
        }
        let (ops, errors) = bench(mode, &addrs, Duration::from_secs(seconds), threads)?;
        println!("ops {ops} errors {errors}");
        return Ok(());
    }
    let [mode, addr, count] = rest.as_slice() else {
        bail!(
            "usage: ferrokube-lbprobe [--cgroup DIR] [--netns PATH] tcp|udp|udp-connected ADDR COUNT"
        );
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let count: u32 = count.parse().context("COUNT")?;
    if let Some(cgroup) = cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
    }
    if let Some(netns) = netns {
        enter_netns(&netns)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(proto) = mode.strip_suffix("-hold") {
        return hold(proto, addr, Duration::from_secs(u64::from(count)), &mut out);
    }
    for _ in 0..count {
        let line = match once(mode, addr) {
            Ok((peer, reply)) => format!("ok {peer} {reply}"),
            Err(e) => format!("err {}", kind(&e)),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One connected socket, exchanged on until it fails or `for_how_long` passes.
fn hold(proto: &str, addr: SocketAddr, for_how_long: Duration, out: &mut impl Write) -> Result<()> {
    enum Held {
        Tcp(TcpStream),
        Udp(UdpSocket),
    }
    let exchange = |held: &mut Held| -> std::io::Result<String> {
        let mut buf = [0u8; 64];
        let n = match held {
            Held::Tcp(stream) => {
                stream.write_all(b"hello\n")?;
                stream.read(&mut buf)?
            }
            Held::Udp(socket) => {
                socket.send(b"hello\n")?;
                socket.recv(&mut buf)?
            }
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let connected = match proto {
        "tcp" => TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            Ok(Held::Tcp(s))
        }),
        "udp" => UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            s.connect(addr)?;
            Ok(Held::Udp(s))
        }),
        other => bail!("unknown mode {other}-hold"),
    };
    let mut held = match connected {
        Ok(held) => held,
        Err(e) => {
            writeln!(out, "err {}", kind(&e))?;
            return Ok(());
        }
    };
    let peer = match &held {
        Held::Tcp(s) => s.peer_addr(),
        Held::Udp(s) => s.peer_addr(),
    };
    match peer.and_then(|peer| Ok((peer, exchange(&mut held)?))) {
        Ok((peer, reply)) => writeln!(out, "ok {peer} {reply}")?,
        Err(e) => {
            writeln!(out, "err {}", kind(&e))?;
            return Ok(());
        }
    }
    out.flush()?;
    let start = std::time::Instant::now();
    while start.elapsed() < for_how_long {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = exchange(&mut held) {
            writeln!(out, "err {}", kind(&e))?;
            return Ok(());
        }
    }
    writeln!(out, "held")?;
    Ok(())
}

/// The benchmark client: `(operations, errors)` over all threads.
fn bench(
    mode: &str,
    addrs: &[SocketAddr],
    duration: Duration,
    threads: usize,
) -> Result<(u64, u64)> {
    let short = match mode {
        "bench-short" => true,
        "bench-rr" => false,
        other => bail!("unknown mode {other}"),
    };
    let deadline = std::time::Instant::now() + duration;
    let exchange = |stream: &mut TcpStream| -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        stream.write_all(b"ping\n")?;
        if stream.read(&mut buf)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(())
    };
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let (mut ops, mut errors) = (0u64, 0u64);
                    let mut i = t;
                    let mut held: Option<TcpStream> = None;
                    while std::time::Instant::now() < deadline {
                        let addr = addrs[i % addrs.len()];
                        i += 1;
                        let result = if short {
                            TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|mut s| {
                                s.set_nodelay(true)?;
                                s.set_read_timeout(Some(TIMEOUT))?;
                                exchange(&mut s)
                            })
                        } else {
                            let stream = match held.take() {
                                Some(s) => Ok(s),
                                None => TcpStream::connect_timeout(&addr, TIMEOUT).and_then(|s| {
                                    s.set_nodelay(true)?;
                                    s.set_read_timeout(Some(TIMEOUT))?;
                                    Ok(s)
                                }),
                            };
                            stream.and_then(|mut s| {
                                exchange(&mut s)?;
                                held = Some(s);
                                Ok(())
                            })
                        };
                        match result {
                            Ok(()) => ops += 1,
                            Err(_) => errors += 1,
                        }
                    }
                    (ops, errors)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 1)))
            .collect()
    });
    Ok(results
        .into_iter()
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d)))
}

fn enter_netns(path: &PathBuf) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

fn kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".into(),
        std::io::ErrorKind::PermissionDenied => "denied".into(),
        _ => format!("{e}").replace(' ', "_"),
    }
}

fn once(mode: &str, addr: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    let mut buf = [0u8; 64];
    match mode {
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let peer = stream.peer_addr()?;
            stream.write_all(b"hello\n")?;
            let n = stream.read(&mut buf)?;
            Ok((peer, String::from_utf8_lossy(&buf[..n]).into_owned()))
        }
        "udp" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send_to(b"hello\n", addr)?;
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
        }
        "udp-connected" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.connect(addr)?;
            let peer = socket.peer_addr()?;
            socket.send(b"hello\n")?;
            let n = socket.recv(&mut buf)?;
            Ok((peer, String::from_utf8_lossy(&buf[..n]).into_owned()))
        }
        other => Err(std::io::Error::other(format!("unknown mode {other}"))),
    }
}
