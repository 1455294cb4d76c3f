//! Real slot networks: namespaces, veths, TAPs and nftables on this host. Needs root, `ip`, `nft`
//! and /dev/net/tun; without them each test prints "skipping: <reason>" and passes.
//!
//! The guest is played by the test itself: it attaches to the namespace's `tap0` like a VMM would
//! and reads and writes raw Ethernet frames as 169.254.0.21 (answering ARP, sending and answering
//! TCP handshakes). So the paths checked are the ones a real guest's packets take: host → host
//! address → DNAT → TAP, and TAP → SNAT / metadata DNAT / masquerade → host or beyond.
//!
//! Slots 32000 and up are used so that an agent running on the same host (which starts at slot 1)
//! is not disturbed. Every slot is wrapped in a guard that removes it even when an assertion fails.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};
use wrenn_agent::network::linux::LinuxNetwork;
use wrenn_agent::network::{
    GUEST_IP, METADATA_IP, Network, NetworkOptions, SlotAddresses, TAP_TXQUEUELEN,
};

/// `cleanup_stale` removes every slot it is not told to keep, including those of tests running
/// at the same time; it takes this lock for writing, every other test for reading.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const GUEST_MAC: [u8; 6] = [0x02, 0xfc, 0x00, 0x00, 0x00, 0x05];
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slot_lifecycle_reaches_the_guest_and_leaves_nothing_behind() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let slot = 32001;
    let a = SlotAddresses::for_slot(slot);
    let net = LinuxNetwork::new(None);
    net.prepare_host().await.expect("prepare host");

    // The agent's metadata server, as the namespace's metadata DNAT will reach it.
    let metadata = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("listen");
    let metadata_port = metadata.local_addr().expect("addr").port();

    let started = Instant::now();
    let created = net
        .create(
            slot,
            &NetworkOptions {
                metadata_port: Some(metadata_port),
            },
        )
        .await
        .expect("create");
    let create_time = started.elapsed();
    let guard = SlotGuard::new(&net, slot);
    assert_eq!(created.slot, slot);
    assert_eq!(created.addresses, a);

    // What exists: namespace, TAP, veth ends, routes, forwarding, both rule sets.
    assert!(run_ok(&["ip", "netns", "list"]).contains(&a.netns));
    let tap = run_ok(&["ip", "-n", &a.netns, "-d", "addr", "show", "dev", "tap0"]);
    assert!(tap.contains("inet 169.254.0.22/30"), "{tap}");
    assert!(tap.contains(&format!("qlen {TAP_TXQUEUELEN}")), "{tap}");
    assert!(tap.contains("tun type tap"), "{tap}");
    let eth0 = run_ok(&["ip", "-n", &a.netns, "addr", "show", "dev", "eth0"]);
    assert!(eth0.contains(&format!("inet {}/31", a.vpeer_ip)), "{eth0}");
    let ns_routes = run_ok(&["ip", "-n", &a.netns, "route", "show", "default"]);
    assert!(
        ns_routes.contains(&format!("default via {} dev eth0", a.veth_ip)),
        "{ns_routes}"
    );
    let forwarding = run_ok(&[
        "ip",
        "netns",
        "exec",
        &a.netns,
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
    ]);
    assert_eq!(forwarding.trim(), "1");
    let ns_rules = run_ok(&[
        "ip", "netns", "exec", &a.netns, "nft", "list", "table", "ip", "wrenn",
    ]);
    assert!(
        ns_rules.contains(&format!(
            "ip daddr 169.254.169.254 tcp dport 80 dnat to {}:{metadata_port}",
            a.veth_ip
        )),
        "{ns_rules}"
    );
    let host_addr = run_ok(&["ip", "addr", "show", "dev", &a.host_veth]);
    assert!(
        host_addr.contains(&format!("inet {}/31", a.veth_ip)),
        "{host_addr}"
    );
    let route = run_ok(&["ip", "route", "show", &format!("{}/32", a.host_ip)]);
    assert!(
        route.contains(&format!("via {} dev {}", a.vpeer_ip, a.host_veth)),
        "{route}"
    );
    run_ok(&["nft", "list", "table", "ip", &format!("wrenn-slot-{slot}")]);
    assert!(
        net.existing_slots()
            .await
            .expect("existing slots")
            .contains(&slot)
    );

    let guest = FakeGuest::attach(&a.netns);

    // Host → guest: the host address is DNATed to the guest; the guest sees the host's veth
    // address as the source.
    let guest = host_reaches_guest(guest, &a, 7001).await;

    // Guest → metadata: 169.254.169.254:80 lands on the agent's listener, from the namespace's
    // veth address (the SNAT), which is how the metadata server tells slots apart.
    let (guest, peer, local) =
        guest_connects(guest, SocketAddrV4::new(METADATA_IP, 80), &metadata, 40001).await;
    assert_eq!(*peer.ip(), a.vpeer_ip, "metadata request not SNATed");
    assert_eq!(local, SocketAddrV4::new(a.veth_ip, metadata_port));

    // Guest → host directly: SNATed as well.
    let (guest, peer, _) = guest_connects(
        guest,
        SocketAddrV4::new(a.veth_ip, metadata_port),
        &metadata,
        40002,
    )
    .await;
    assert_eq!(*peer.ip(), a.vpeer_ip);
    // A real VMM exits before its network is destroyed; an open TAP would keep the namespace
    // alive after `ip netns del`.
    drop(guest);

    let started = Instant::now();
    net.destroy(slot).await.expect("destroy");
    let destroy_time = started.elapsed();
    assert_slot_gone(&net, &a).await;
    net.destroy(slot).await.expect("destroying twice is fine");
    guard.disarm();
    println!(
        "slot {slot}: create {:.1} ms, destroy {:.1} ms",
        create_time.as_secs_f64() * 1e3,
        destroy_time.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn failed_create_rolls_back() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let slot = 32002;
    let a = SlotAddresses::for_slot(slot);
    let net = LinuxNetwork::new(None);

    // A route to the slot's host address already exists, so the host batch fails at its last
    // line, after the namespace and the veth pair were made.
    let host_route = format!("{}/32", a.host_ip);
    run_ok(&["ip", "route", "replace", &host_route, "dev", "lo"]);
    let _route = Cleanup(vec![vec![
        "ip".into(),
        "route".into(),
        "del".into(),
        host_route.clone(),
        "dev".into(),
        "lo".into(),
    ]]);
    let guard = SlotGuard::new(&net, slot);

    let err = net
        .create(slot, &NetworkOptions::default())
        .await
        .expect_err("create must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("File exists") && msg.contains("route add"),
        "error names the failing step: {msg}"
    );
    assert!(!std::path::Path::new("/run/netns").join(&a.netns).exists());
    assert!(!link_exists(&a.host_veth), "veth left behind");
    assert!(
        !run(&["nft", "list", "table", "ip", &format!("wrenn-slot-{slot}")]).0,
        "host table left behind"
    );
    guard.disarm();
}

#[tokio::test]
async fn slot_out_of_range_is_rejected() {
    let net = LinuxNetwork::new(None);
    for slot in [0, 32768] {
        let err = net
            .create(slot, &NetworkOptions::default())
            .await
            .expect_err("out of range");
        assert!(err.to_string().contains("outside"), "{err}");
    }
}

#[tokio::test]
async fn concurrent_slots_work_and_are_isolated() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let net = LinuxNetwork::new(None);
    let slots = [32011, 32012, 32013];

    let options = NetworkOptions::default();
    let started = Instant::now();
    let results =
        futures::future::join_all(slots.iter().map(|&slot| net.create(slot, &options))).await;
    let create_time = started.elapsed();
    let guards: Vec<SlotGuard> = slots.iter().map(|&s| SlotGuard::new(&net, s)).collect();
    for (slot, result) in slots.iter().zip(&results) {
        assert!(result.is_ok(), "slot {slot}: {result:?}");
    }

    let addrs: Vec<SlotAddresses> = slots.iter().map(|&s| SlotAddresses::for_slot(s)).collect();
    let mut guests: Vec<FakeGuest> = addrs.iter().map(|a| FakeGuest::attach(&a.netns)).collect();
    // Each guest is reached at its own host address (all three have the same guest address).
    let mut reached = Vec::new();
    for (guest, a) in guests.drain(..).zip(&addrs) {
        reached.push(host_reaches_guest(guest, a, 7002).await);
    }

    // A guest cannot reach its neighbour through the neighbour's host address.
    let mut guests = reached;
    let target = SocketAddrV4::new(addrs[1].host_ip, 7003);
    let mut sender = guests.remove(0);
    let mut neighbour = guests.remove(0);
    let leaked = tokio::task::spawn_blocking(move || {
        sender.send_tcp(SocketAddrV4::new(GUEST_IP, 40010), target, 1, 0, SYN);
        let seen = neighbour.expect_tcp(Duration::from_millis(700), |s| s.dst.port() == 7003);
        (sender, neighbour, seen)
    })
    .await
    .expect("guest thread");
    assert!(leaked.2.is_none(), "slot-to-slot traffic was forwarded");
    drop(leaked);
    drop(guests);

    let started = Instant::now();
    let results = futures::future::join_all(slots.iter().map(|&slot| net.destroy(slot))).await;
    let destroy_time = started.elapsed();
    for (slot, result) in slots.iter().zip(results) {
        result.unwrap_or_else(|e| panic!("destroy {slot}: {e}"));
    }
    for a in &addrs {
        assert_slot_gone(&net, a).await;
    }
    guards.into_iter().for_each(SlotGuard::disarm);
    println!(
        "3 slots at once: create {:.1} ms, destroy {:.1} ms",
        create_time.as_secs_f64() * 1e3,
        destroy_time.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn cleanup_stale_removes_only_unkept_slots() {
    if skip() {
        return;
    }
    let _exclusive = EXCLUSIVE.write().await;
    let net = LinuxNetwork::new(None);
    let (kept, stale) = (32021, 32022);
    for slot in [kept, stale] {
        net.create(slot, &NetworkOptions::default())
            .await
            .expect("create");
    }
    let _guards = [SlotGuard::new(&net, kept), SlotGuard::new(&net, stale)];

    // Keep everything else found on this host too (an agent may be running here).
    let keep: Vec<u32> = net
        .existing_slots()
        .await
        .expect("existing")
        .into_iter()
        .filter(|&s| s != stale)
        .collect();
    assert!(keep.contains(&kept));
    let report = net
        .cleanup_stale(1..=wrenn_agent::network::slots::MAX_SLOTS, &keep)
        .await
        .expect("cleanup");
    assert_eq!(report.namespaces, vec![format!("wrenn-ns-{stale}")]);
    assert_eq!(report.links, vec![format!("wrenn-v{stale}")]);
    assert_eq!(report.nft_tables, vec![format!("wrenn-slot-{stale}")]);

    assert_slot_gone(&net, &SlotAddresses::for_slot(stale)).await;
    let k = SlotAddresses::for_slot(kept);
    assert!(std::path::Path::new("/run/netns").join(&k.netns).exists());
    assert!(link_exists(&k.host_veth));
    run_ok(&["nft", "list", "table", "ip", &format!("wrenn-slot-{kept}")]);

    // A second sweep finds nothing more to do.
    let again = net
        .cleanup_stale(1..=wrenn_agent::network::slots::MAX_SLOTS, &keep)
        .await
        .expect("cleanup");
    assert_eq!(again, Default::default());
    net.destroy(kept).await.expect("destroy");
}

#[tokio::test]
async fn create_replaces_leftovers_of_the_same_slot() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let slot = 32051;
    let a = SlotAddresses::for_slot(slot);
    let net = LinuxNetwork::new(None);
    // A half-removed slot: its namespace is gone, its veth is not (and vice versa below).
    net.create(slot, &NetworkOptions::default())
        .await
        .expect("create");
    let guard = SlotGuard::new(&net, slot);
    run_ok(&["ip", "netns", "del", &a.netns]);
    net.create(slot, &NetworkOptions::default())
        .await
        .expect("create over a leftover veth");
    run_ok(&["ip", "link", "del", &a.host_veth]);
    net.create(slot, &NetworkOptions::default())
        .await
        .expect("create over a leftover namespace");
    let guest = FakeGuest::attach(&a.netns);
    drop(host_reaches_guest(guest, &a, 7004).await);
    net.destroy(slot).await.expect("destroy");
    assert_slot_gone(&net, &a).await;
    guard.disarm();
}

#[tokio::test]
async fn guest_egress_is_masqueraded_on_the_egress_interface() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let slot = 32041;
    let a = SlotAddresses::for_slot(slot);

    // A stand-in for the internet: another namespace behind a veth that plays the host's
    // egress interface, on a benchmarking range (RFC 2544) that no host here should use. (The
    // documentation range 192.0.2.0/24 is this very machine's own network.)
    let (ext_ns, ext_if) = ("wrenn-test-ext", "wtest-ext0");
    let host_net = run_ok(&["ip", "-4", "route", "show", "table", "all"]);
    if host_net.contains("198.18.") {
        println!("skipping: the host already routes 198.18.0.0/15");
        return;
    }
    let _ = run(&["ip", "link", "del", ext_if]);
    let _ = run(&["ip", "netns", "del", ext_ns]);
    let _ext = Cleanup(vec![
        vec!["ip".into(), "link".into(), "del".into(), ext_if.into()],
        vec!["ip".into(), "netns".into(), "del".into(), ext_ns.into()],
    ]);
    run_ok(&["ip", "netns", "add", ext_ns]);
    run_ok(&[
        "ip", "link", "add", ext_if, "type", "veth", "peer", "name", "eth0", "netns", ext_ns,
    ]);
    run_ok(&["ip", "addr", "add", "198.18.250.1/30", "dev", ext_if]);
    run_ok(&["ip", "link", "set", ext_if, "up"]);
    run_ok(&[
        "ip",
        "-n",
        ext_ns,
        "addr",
        "add",
        "198.18.250.2/30",
        "dev",
        "eth0",
    ]);
    run_ok(&["ip", "-n", ext_ns, "link", "set", "eth0", "up"]);
    let outside = in_netns(ext_ns, || {
        std::net::TcpListener::bind("198.18.250.2:0").expect("listen outside")
    });
    outside.set_nonblocking(true).expect("nonblocking");
    let outside = tokio::net::TcpListener::from_std(outside).expect("tokio listener");
    let outside_addr = match outside.local_addr().expect("addr") {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("bound to IPv4"),
    };

    let net = LinuxNetwork::new(Some(ext_if.to_string()));
    net.prepare_host().await.expect("prepare host");
    net.create(slot, &NetworkOptions::default())
        .await
        .expect("create");
    let guard = SlotGuard::new(&net, slot);
    let rules = run_ok(&["nft", "list", "table", "ip", &format!("wrenn-slot-{slot}")]);
    assert!(
        rules.contains(&format!("oifname \"{ext_if}\" masquerade")),
        "{rules}"
    );

    let guest = FakeGuest::attach(&a.netns);
    let (guest, peer, _) = guest_connects(guest, outside_addr, &outside, 40003).await;
    assert_eq!(
        *peer.ip(),
        Ipv4Addr::new(198, 18, 250, 1),
        "the outside sees the host's egress address"
    );

    // The other way round, nothing gets in: a machine outside that routes the slot ranges to
    // this host cannot open a connection to the guest.
    run_ok(&[
        "ip",
        "-n",
        ext_ns,
        "route",
        "add",
        "10.11.0.0/16",
        "via",
        "198.18.250.1",
    ]);
    let target = SocketAddrV4::new(a.host_ip, 7005);
    let outsider = std::thread::spawn(move || {
        in_netns(ext_ns, move || {
            std::net::TcpStream::connect_timeout(&target.into(), Duration::from_millis(700)).is_ok()
        })
    });
    let (guest, seen) = tokio::task::spawn_blocking(move || {
        let mut guest = guest;
        let seen = guest.expect_tcp(Duration::from_millis(900), |s| s.dst.port() == 7005);
        (guest, seen)
    })
    .await
    .expect("guest thread");
    assert!(
        seen.is_none(),
        "a connection from outside reached the guest: {seen:?}"
    );
    assert!(!outsider.join().expect("outsider thread"));

    drop(guest);
    drop(outside);
    net.destroy(slot).await.expect("destroy");
    guard.disarm();
}

#[tokio::test]
async fn create_and_destroy_timing() {
    if skip() {
        return;
    }
    let _shared = EXCLUSIVE.read().await;
    let slot = 32031;
    let net = LinuxNetwork::new(None);
    let guard = SlotGuard::new(&net, slot);
    let rounds = 10;
    let (mut creates, mut destroys) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        net.create(
            slot,
            &NetworkOptions {
                metadata_port: Some(8052),
            },
        )
        .await
        .expect("create");
        creates.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        net.destroy(slot).await.expect("destroy");
        destroys.push(t.elapsed().as_secs_f64() * 1e3);
    }
    guard.disarm();
    let stats = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        format!("mean {mean:.1} ms, min {min:.1} ms, max {max:.1} ms")
    };
    println!("create ({rounds} rounds): {}", stats(&creates));
    println!("destroy ({rounds} rounds): {}", stats(&destroys));
}

// ---------------------------------------------------------------------------------------------
// Scenario helpers
// ---------------------------------------------------------------------------------------------

/// The host connects to `a.host_ip:port`; the guest answers the SYN. Returns the guest.
async fn host_reaches_guest(mut guest: FakeGuest, a: &SlotAddresses, port: u16) -> FakeGuest {
    let target = SocketAddrV4::new(a.host_ip, port);
    let connect = tokio::spawn(async move {
        tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(target)).await
    });
    let veth_ip = a.veth_ip;
    let guest = tokio::task::spawn_blocking(move || {
        let syn = guest
            .expect_tcp(WAIT, |s| {
                s.flags & SYN != 0 && s.dst == SocketAddrV4::new(GUEST_IP, port)
            })
            .expect("the guest never saw the host's SYN");
        assert_eq!(*syn.src.ip(), veth_ip, "the host's source address");
        guest.send_tcp(syn.dst, syn.src, 9000, syn.seq.wrapping_add(1), SYN | ACK);
        guest
    })
    .await
    .expect("guest thread");
    let stream = connect
        .await
        .expect("connect task")
        .expect("connect timed out")
        .expect("connect");
    assert_eq!(stream.peer_addr().expect("peer"), SocketAddr::V4(target));
    guest
}

/// The guest opens a TCP connection from port `sport` to `target`, which `listener` serves.
/// Returns the guest, the peer address the listener saw and the local address it accepted on.
async fn guest_connects(
    mut guest: FakeGuest,
    target: SocketAddrV4,
    listener: &tokio::net::TcpListener,
    sport: u16,
) -> (FakeGuest, SocketAddrV4, SocketAddrV4) {
    let from = SocketAddrV4::new(GUEST_IP, sport);
    let handshake = tokio::task::spawn_blocking(move || {
        guest.send_tcp(from, target, 100, 0, SYN);
        let syn_ack = guest
            .expect_tcp(WAIT, |s| {
                s.dst == from && s.flags & (SYN | ACK) == SYN | ACK
            })
            .unwrap_or_else(|| panic!("no SYN-ACK from {target}"));
        assert_eq!(
            syn_ack.src, target,
            "the reply comes from the address asked"
        );
        assert_eq!(syn_ack.ack, 101);
        guest.send_tcp(from, target, 101, syn_ack.seq.wrapping_add(1), ACK);
        guest
    });
    // The handshake completes in the kernel; accept then finds the connection queued.
    let guest = handshake.await.expect("guest thread");
    let (stream, peer) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection arrived")
        .expect("accept");
    let local = match stream.local_addr().expect("local") {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => panic!("unexpected IPv6 {v6}"),
    };
    let peer = match peer {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => panic!("unexpected IPv6 {v6}"),
    };
    (guest, peer, local)
}

async fn assert_slot_gone(net: &LinuxNetwork, a: &SlotAddresses) {
    assert!(
        !std::path::Path::new("/run/netns").join(&a.netns).exists(),
        "namespace {} left behind",
        a.netns
    );
    assert!(!link_exists(&a.host_veth), "{} left behind", a.host_veth);
    assert!(
        !run(&[
            "nft",
            "list",
            "table",
            "ip",
            &format!("wrenn-slot-{}", a.slot)
        ])
        .0,
        "host table of slot {} left behind",
        a.slot
    );
    let route = run_ok(&["ip", "route", "show", &format!("{}/32", a.host_ip)]);
    assert!(route.trim().is_empty(), "host route left behind: {route}");
    assert!(
        !net.existing_slots()
            .await
            .expect("existing")
            .contains(&a.slot)
    );
}

// ---------------------------------------------------------------------------------------------
// The fake guest: raw frames on the namespace's TAP
// ---------------------------------------------------------------------------------------------

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A TCP segment as seen on the TAP.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Plays the guest at 169.254.0.21 with the guest MAC, on the namespace's `tap0`.
struct FakeGuest {
    tap: File,
    /// The namespace side of the TAP: where the guest sends its frames (its gateway's MAC).
    gateway_mac: [u8; 6],
}

impl FakeGuest {
    fn attach(netns: &str) -> FakeGuest {
        let tap = in_netns(netns, || open_tap("tap0"));
        let link = run_ok(&["ip", "-n", netns, "-o", "link", "show", "dev", "tap0"]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {link}"));
        let mut gateway_mac = [0u8; 6];
        for (byte, hex) in gateway_mac.iter_mut().zip(mac.split(':')) {
            *byte = u8::from_str_radix(hex, 16).expect("MAC byte");
        }
        FakeGuest { tap, gateway_mac }
    }

    fn send_tcp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: u8) {
        let frame = tcp_frame(self.gateway_mac, src, dst, seq, ack, flags);
        self.tap.write_all(&frame).expect("write frame");
    }

    /// Waits up to `timeout` for a TCP segment `want` accepts, answering ARP meanwhile.
    fn expect_tcp(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Segment) -> bool,
    ) -> Option<Segment> {
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.recv(deadline) {
            if let Some(reply) = arp_reply(&frame) {
                self.tap.write_all(&reply).expect("write ARP reply");
            } else if let Some(segment) = parse_tcp(&frame)
                && want(&segment)
            {
                return Some(segment);
            }
        }
        None
    }

    fn recv(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: self.tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = remaining.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            return if ready == 0 {
                None
            } else {
                self.recv(deadline)
            };
        }
        let mut buf = vec![0u8; 4096];
        let n = self.tap.read(&mut buf).expect("read frame");
        buf.truncate(n);
        Some(buf)
    }
}

/// Attaches to an existing TAP (in the calling thread's namespace), as a VMM does.
fn open_tap(name: &str) -> File {
    const TUNSETIFF: u64 = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes), which `IfReq` lays out.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// The guest's answer to an ARP request for its address.
fn arp_reply(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x06] {
        return None;
    }
    let arp = &frame[14..42];
    let is_request = arp[6..8] == [0, 1];
    if !is_request || arp[24..28] != GUEST_IP.octets() {
        return None;
    }
    let (sender_mac, sender_ip) = (&arp[8..14], &arp[14..18]);
    let mut out = Vec::with_capacity(42);
    out.extend_from_slice(sender_mac);
    out.extend_from_slice(&GUEST_MAC);
    out.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    out.extend_from_slice(&GUEST_MAC);
    out.extend_from_slice(&GUEST_IP.octets());
    out.extend_from_slice(sender_mac);
    out.extend_from_slice(sender_ip);
    Some(out)
}

fn parse_tcp(frame: &[u8]) -> Option<Segment> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let tcp = &ip[ihl..];
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(Segment {
        src: SocketAddrV4::new(addr(&ip[12..16]), u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddrV4::new(addr(&ip[16..20]), u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: word(&tcp[4..8]),
        ack: word(&tcp[8..12]),
        flags: tcp[13],
    })
}

fn tcp_frame(
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    tcp[16..18].copy_from_slice(&checksum(&pseudo).to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

/// Removes a slot's network when dropped, so a failed assertion leaves nothing behind.
struct SlotGuard {
    net: LinuxNetwork,
    slot: u32,
    armed: bool,
}

impl SlotGuard {
    fn new(net: &LinuxNetwork, slot: u32) -> Self {
        Self {
            net: net.clone(),
            slot,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (net, slot) = (self.net.clone(), self.slot);
        // Drop cannot await, and the test's runtime cannot be blocked on from inside: destroy on
        // a runtime of its own in another thread.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(net.destroy(slot)).map_err(|e| e.to_string()))
        })
        .join();
        if let Ok(Err(e)) = result {
            eprintln!("cleaning up slot {slot} failed: {e}");
        }
    }
}

/// Runs the commands when dropped, ignoring failures.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cmd in &self.0 {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let _ = run(&args);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `netns`; sockets and TAPs it opens
/// stay in that namespace.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: plain syscall on a valid fd; it only changes this (short-lived) thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

fn link_exists(name: &str) -> bool {
    run(&["ip", "link", "show", "dev", name]).0
}

fn run(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn run_ok(args: &[&str]) -> String {
    let (ok, out) = run(args);
    assert!(ok, "`{}` failed: {out}", args.join(" "));
    out
}

/// Why these tests cannot run here, printed as "skipping: <reason>"; None when they can.
fn skip() -> bool {
    let reason = if !nix::unistd::Uid::effective().is_root() {
        Some("not root".to_string())
    } else if !run(&["ip", "-V"]).0 {
        Some("`ip` not found (install iproute2)".to_string())
    } else if !run(&["nft", "--version"]).0 {
        Some("`nft` not found (install nftables)".to_string())
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing (modprobe tun)".to_string())
    } else {
        None
    };
    if let Some(reason) = &reason {
        println!("skipping: {reason}");
    }
    reason.is_some()
}
