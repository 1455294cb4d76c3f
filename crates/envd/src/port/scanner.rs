//! Listening TCP sockets, read from `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! The kernel's tables are read directly: walking `/proc/PID/fd` would cost a syscall per
//! descriptor of every process on every scan, and needs privileges for other users' processes.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// `TCP_LISTEN` in the kernel's `st` column.
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp{,6}`: the fields the forwarder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Socket {
    pub local: SocketAddr,
    /// The kernel's TCP state (`TCP_LISTEN` = 0x0A).
    pub state: u8,
    /// Socket inode; lets the forwarder recognise its own listeners.
    pub inode: u64,
}

impl Socket {
    pub fn is_listen(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// A program listening on a loopback address (127.0.0.1 or ::1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    pub port: u16,
    pub family: Family,
}

impl Listener {
    /// Where relayed connections go: the loopback address the program listens on.
    pub fn loopback_addr(&self) -> SocketAddr {
        let ip = match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// Parses the text of `/proc/net/tcp` (`v6 == false`) or `/proc/net/tcp6` (`v6 == true`).
///
/// The header and any malformed line are skipped: the table is read while the kernel changes it.
pub fn parse_proc_net_tcp(contents: &str, v6: bool) -> Vec<Socket> {
    contents
        .lines()
        .filter_map(|line| parse_line(line, v6))
        .collect()
}

fn parse_line(line: &str, v6: bool) -> Option<Socket> {
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let (ip_hex, port_hex) = fields.next()?.split_once(':')?;
    let _remote = fields.next()?;
    let state = fields.next()?;
    let inode = fields.nth(5)?;

    let ip = parse_ip(ip_hex, v6)?;
    let port = u16::from_str_radix(exact_hex(port_hex, 4)?, 16).ok()?;
    let state = u8::from_str_radix(exact_hex(state, 2)?, 16).ok()?;
    if inode.is_empty() || !inode.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let inode = inode.parse().ok()?;
    Some(Socket {
        local: SocketAddr::new(ip, port),
        state,
        inode,
    })
}

/// `s` if it is exactly `len` hex digits (`from_str_radix` alone would accept a sign).
fn exact_hex(s: &str, len: usize) -> Option<&str> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// The kernel prints each 32-bit word of the address as the integer it holds in memory, so the
/// bytes come back with the host's order (little-endian on x86_64 and aarch64).
fn word_bytes(hex: &str) -> Option<[u8; 4]> {
    let word = u32::from_str_radix(exact_hex(hex, 8)?, 16).ok()?;
    Some(word.to_ne_bytes())
}

fn parse_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    if !v6 {
        return Some(IpAddr::V4(Ipv4Addr::from(word_bytes(hex)?)));
    }
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&word_bytes(hex.get(i * 8..i * 8 + 8)?)?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// The listening sockets bound to exactly 127.0.0.1 or ::1 (also as `::ffff:127.0.0.1`).
///
/// Wildcard listeners (0.0.0.0, ::) are reachable from outside already and are left out.
pub fn loopback_listeners(sockets: &[Socket]) -> BTreeSet<Listener> {
    sockets
        .iter()
        .filter(|s| s.is_listen())
        .filter_map(|s| {
            let family = match s.local.ip().to_canonical() {
                IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => Family::V4,
                IpAddr::V6(ip) if ip == Ipv6Addr::LOCALHOST => Family::V6,
                _ => return None,
            };
            Some(Listener {
                port: s.local.port(),
                family,
            })
        })
        .collect()
}

/// Reads the socket tables under a proc root (`/proc`, or a fake tree in tests).
#[derive(Debug, Clone)]
pub struct Scanner {
    proc_root: PathBuf,
}

impl Scanner {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
        }
    }

    /// Every listening socket, IPv4 and IPv6. A missing `tcp6` (IPv6 disabled) is not an error.
    pub fn listening_sockets(&self) -> io::Result<Vec<Socket>> {
        let net = self.proc_root.join("net");
        let v4 = std::fs::read_to_string(net.join("tcp"))?;
        let v6 = match std::fs::read_to_string(net.join("tcp6")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut sockets = parse_proc_net_tcp(&v4, false);
        sockets.extend(parse_proc_net_tcp(&v6, true));
        sockets.retain(Socket::is_listen);
        Ok(sockets)
    }

    /// The programs listening on loopback only: those the forwarder exposes.
    pub fn loopback_listeners(&self) -> io::Result<BTreeSet<Listener>> {
        Ok(loopback_listeners(&self.listening_sockets()?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20001 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 41299 1 0000000000000000 20 4 30 10 -1
   3: 0200A8C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 779 1 0000000000000000 100 0 0 10 0
";

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv4_table() {
        let sockets = parse_proc_net_tcp(TCP, false);
        assert_eq!(sockets.len(), 4);
        assert_eq!(
            sockets[0],
            Socket {
                local: v4(127, 0, 0, 1, 8080),
                state: TCP_LISTEN,
                inode: 41234
            }
        );
        assert_eq!(sockets[1].local, v4(0, 0, 0, 0, 50051));
        assert!(!sockets[2].is_listen());
        assert_eq!(sockets[3].local, v4(192, 168, 0, 2, 22));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv6_table() {
        let sockets = parse_proc_net_tcp(TCP6, true);
        assert_eq!(sockets.len(), 3);
        assert_eq!(
            sockets[0],
            Socket {
                local: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 3000),
                state: TCP_LISTEN,
                inode: 777
            }
        );
        assert_eq!(
            sockets[1].local,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80)
        );
        assert_eq!(
            sockets[2].local.ip(),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())
        );
    }

    #[test]
    fn skips_malformed_lines() {
        let junk = "\n\
            garbage\n\
            0: 0100007F:1F90\n\
            0: 0100007G:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n\
            0: 0100007F:+F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n\
            0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 -1\n\
            0: 0100007F1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n\
            0: 0100007F:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 1\n\
            0: 0100\u{e9}07F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n\
            0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 99999999999999999999999\n\
            0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 7\n";
        let sockets = parse_proc_net_tcp(junk, false);
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets[0].inode, 7);
        // An IPv4 table parsed as IPv6 (and the reverse) yields nothing rather than nonsense.
        assert!(parse_proc_net_tcp(TCP, true).is_empty());
        assert!(parse_proc_net_tcp(TCP6, false).is_empty());
        let bad_v6 = "0: 000000000000000000000000010000\u{e9}:0BB8 0:0 0A 0:0 0:0 0 0 0 1";
        assert!(parse_proc_net_tcp(bad_v6, true).is_empty());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn keeps_only_loopback_listeners() {
        let mut sockets = parse_proc_net_tcp(TCP, false);
        sockets.extend(parse_proc_net_tcp(TCP6, true));
        let found: Vec<_> = loopback_listeners(&sockets).into_iter().collect();
        assert_eq!(
            found,
            vec![
                Listener {
                    port: 3000,
                    family: Family::V6
                },
                Listener {
                    port: 5001,
                    family: Family::V4
                },
                Listener {
                    port: 8080,
                    family: Family::V4
                },
            ]
        );
        assert_eq!(found[0].loopback_addr().to_string(), "[::1]:3000");
        assert_eq!(found[2].loopback_addr().to_string(), "127.0.0.1:8080");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn scanner_reads_a_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), TCP).unwrap();
        let scanner = Scanner::new(dir.path());
        // No tcp6 (IPv6 disabled): still fine.
        let found = scanner.loopback_listeners().unwrap();
        assert_eq!(found.len(), 1);
        std::fs::write(dir.path().join("net/tcp6"), TCP6).unwrap();
        let all = scanner.listening_sockets().unwrap();
        assert!(all.iter().all(Socket::is_listen));
        assert_eq!(all.len(), 6);
        assert_eq!(scanner.loopback_listeners().unwrap().len(), 3);
        // No proc tree at all is an error, not a panic.
        assert!(
            Scanner::new(dir.path().join("missing"))
                .listening_sockets()
                .is_err()
        );
    }
}
