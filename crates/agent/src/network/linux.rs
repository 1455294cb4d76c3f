//! The real [`Network`]: iproute2 and nftables, run as child processes. Needs root (or
//! CAP_NET_ADMIN + CAP_SYS_ADMIN on the agent and the tools).
//!
//! A slot is built with four process runs, each batching several steps (`ip -batch -` on the
//! host, `ip -n <ns> -batch -` in the namespace, one `ip netns exec` for the namespace's
//! forwarding switch and rules, one `nft -f -` on the host), rather than one process per step.
//! Measured on the 2-core development VM: about 20 ms to create a slot, 15-45 ms to remove one.
//! Nothing here keeps state: every name follows from the slot number, which is what lets
//! [`Network::destroy`] and [`Network::cleanup_stale`] work after an agent restart.
//!
//! A create whose future is dropped half-way (its request cancelled) leaves what it made so far;
//! the next create of the same slot replaces such leftovers, and `cleanup_stale` sweeps them at
//! start-up.

use super::nat;
use super::slots::{self, MAX_SLOTS, NS_VETH_NAME, SlotAddresses};
use super::{
    CleanupReport, Network, NetworkOptions, SlotNetwork, TAP_IP, TAP_MAC, TAP_NAME, TAP_PREFIX_LEN,
    TAP_TXQUEUELEN,
};
use crate::error::{AgentError, AgentResult};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long one `ip` or `nft` run may take. They normally finish in milliseconds; a hang means a
/// wedged kernel or tool, and the sandbox request should fail rather than wait forever.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// The host's forwarding switch; without it the guests' traffic never leaves the host.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Where the tools live when the agent's PATH lacks the sbin directories (a service user's PATH
/// often does).
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
/// How many stale slots [`Network::cleanup_stale`] removes at once.
const CLEANUP_PARALLELISM: usize = 8;

/// Slot networks made with `ip` and `nft`.
#[derive(Debug, Clone)]
pub struct LinuxNetwork {
    /// The interface the guests' traffic leaves the host through. None: the interface of the
    /// default route, looked up at each create (so a changed default route is picked up).
    egress_iface: Option<String>,
    ip: PathBuf,
    nft: PathBuf,
}

impl LinuxNetwork {
    /// A network that masquerades guest traffic leaving through `egress_iface`, or through the
    /// default route's interface when None.
    pub fn new(egress_iface: Option<String>) -> Self {
        Self {
            egress_iface,
            ip: find_tool("ip"),
            nft: find_tool("nft"),
        }
    }

    /// The slots that have anything on this host (a namespace, a host veth or a host nftables
    /// table), in ascending order.
    pub async fn existing_slots(&self) -> AgentResult<Vec<u32>> {
        let inventory = self.inventory().await?;
        let slots: BTreeSet<u32> = inventory
            .namespaces
            .iter()
            .chain(&inventory.links)
            .chain(&inventory.tables)
            .map(|(slot, _)| *slot)
            .collect();
        Ok(slots.into_iter().collect())
    }

    /// The egress interface to masquerade on: the configured one, else the default route's.
    fn egress(&self) -> AgentResult<Option<String>> {
        if let Some(iface) = &self.egress_iface {
            if !nat::valid_iface_name(iface) {
                return Err(AgentError::InvalidArgument(format!(
                    "egress interface {iface:?} is not a valid interface name"
                )));
            }
            return Ok(Some(iface.clone()));
        }
        let routes = match std::fs::read_to_string("/proc/net/route") {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/net/route; masquerading on every interface");
                return Ok(None);
            }
        };
        Ok(default_route_iface(&routes).filter(|iface| nat::valid_iface_name(iface)))
    }

    /// Runs the four batches that make up a slot. Stops at the first failure; the caller rolls
    /// back.
    async fn build(
        &self,
        addrs: &SlotAddresses,
        options: &NetworkOptions,
        egress: Option<&str>,
    ) -> AgentResult<()> {
        let SlotAddresses {
            netns,
            host_veth,
            host_ip,
            veth_ip,
            vpeer_ip,
            ..
        } = addrs;
        let veth_len = SlotAddresses::VETH_PREFIX_LEN;

        // Host side. The peer is created directly inside the namespace under its final name, so
        // no interface named `eth0` ever appears on the host (it would clash with the host's own,
        // and with concurrent creates). The route can be added before the namespace end is up:
        // the /31 on the host end already makes the peer address on-link.
        let host_batch = [
            format!("netns add {netns}"),
            format!("link add {host_veth} type veth peer name {NS_VETH_NAME} netns {netns}"),
            format!("addr add {veth_ip}/{veth_len} dev {host_veth}"),
            format!("link set {host_veth} up"),
            format!("route add {host_ip}/32 via {vpeer_ip} dev {host_veth}"),
        ];
        self.ip_batch(None, &host_batch).await?;

        // Namespace side: its veth end, the TAP the VMM opens, and the way out.
        let ns_batch = [
            "link set lo up".to_string(),
            format!("addr add {vpeer_ip}/{veth_len} dev {NS_VETH_NAME}"),
            format!("link set {NS_VETH_NAME} up"),
            format!("tuntap add dev {TAP_NAME} mode tap"),
            format!("addr add {TAP_IP}/{TAP_PREFIX_LEN} dev {TAP_NAME}"),
            format!("link set {TAP_NAME} address {TAP_MAC}"),
            format!("link set {TAP_NAME} txqueuelen {TAP_TXQUEUELEN} up"),
            format!("route add default via {veth_ip}"),
        ];
        // Forwarding is per namespace; `nft` has no namespace option. One `ip netns exec` does
        // both: the shell flips the switch and becomes `nft` (passed as $0, so its resolved path
        // is used), which reads the rules from our stdin.
        let nft = self.nft.to_string_lossy();
        let ns_rules = nat::namespace_ruleset(addrs, options.metadata_port);
        let inside = async {
            self.ip_batch(Some(netns), &ns_batch).await?;
            self.run(
                &self.ip,
                &[
                    "netns",
                    "exec",
                    netns,
                    "sh",
                    "-c",
                    "echo 1 > /proc/sys/net/ipv4/ip_forward && exec \"$0\" -f -",
                    &nft,
                ],
                Some(&ns_rules),
            )
            .await
        };
        // The host's rules only name the veth, so they can load while the namespace is set up.
        // Each run mostly waits in the kernel (about 10 ms per nft commit here, with no CPU
        // time), so overlapping them shortens a create.
        let host_rules = nat::host_ruleset(addrs, egress, options.metadata_port);
        let host = self.run(&self.nft, &["-f", "-"], Some(&host_rules));
        tokio::try_join!(inside, host)?;
        Ok(())
    }

    /// Runs `lines` through one `ip -batch -` (in namespace `netns` if given). On failure the
    /// error names the line that failed, which the tool itself only gives as a number.
    async fn ip_batch(&self, netns: Option<&str>, lines: &[String]) -> AgentResult<()> {
        let mut script = lines.join("\n");
        script.push('\n');
        let args: Vec<&str> = match netns {
            Some(ns) => vec!["-n", ns, "-batch", "-"],
            None => vec!["-batch", "-"],
        };
        match self.run(&self.ip, &args, Some(&script)).await {
            Err(AgentError::Command { command, detail }) => {
                let detail = match failed_batch_line(&detail).and_then(|n| lines.get(n - 1)) {
                    Some(line) => format!("{detail} (`{line}`)"),
                    None => detail,
                };
                Err(AgentError::Command { command, detail })
            }
            other => other.map(|_| ()),
        }
    }

    /// Runs a tool with a timeout, feeding it `stdin`. A non-zero exit becomes
    /// [`AgentError::Command`] with the tool's stderr, which is what says what went wrong.
    async fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> AgentResult<Output> {
        let name = std::iter::once(program.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::trace!(command = %name, "running");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let work = async {
            let mut child = cmd.spawn()?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A tool that fails early closes its stdin; its exit status and stderr say why,
                // so a broken pipe here is not the error to report.
                if let Err(e) = pipe.write_all(text.as_bytes()).await {
                    tracing::debug!(command = %name, error = %e, "writing stdin failed");
                }
            }
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(TOOL_TIMEOUT, work)
            .await
            .map_err(|_| AgentError::command(&name, format!("no answer in {TOOL_TIMEOUT:?}")))?
            .map_err(|e| AgentError::command(&name, e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let detail = if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            };
            return Err(AgentError::command(&name, detail));
        }
        Ok(out)
    }

    /// Everything with one of our names on this host, by kind.
    async fn inventory(&self) -> AgentResult<Inventory> {
        let namespaces = match std::fs::read_dir(NETNS_DIR) {
            Ok(dir) => dir
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter_map(|name| slots::slot_of_netns(&name).map(|slot| (slot, name)))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(AgentError::io(NETNS_DIR, e)),
        };
        let links = nix::net::if_::if_nameindex()
            .map_err(|e| AgentError::Network(format!("listing interfaces: {e}")))?
            .iter()
            .filter_map(|iface| iface.name().to_str().ok().map(str::to_string))
            .filter_map(|name| slots::slot_of_host_veth(&name).map(|slot| (slot, name)))
            .collect();
        let listing = self.run(&self.nft, &["list", "tables"], None).await?;
        let tables = nat::slots_in_table_list(&String::from_utf8_lossy(&listing.stdout))
            .into_iter()
            .map(|slot| (slot, nat::host_table(slot)))
            .collect();
        Ok(Inventory {
            namespaces,
            links,
            tables,
        })
    }
}

/// Names found on the host, each with its slot.
#[derive(Debug, Default)]
struct Inventory {
    namespaces: Vec<(u32, String)>,
    links: Vec<(u32, String)>,
    tables: Vec<(u32, String)>,
}

#[async_trait]
impl Network for LinuxNetwork {
    async fn prepare_host(&self) -> AgentResult<()> {
        let missing: Vec<&str> = [("ip", &self.ip), ("nft", &self.nft)]
            .into_iter()
            .filter(|(_, path)| !is_executable(path))
            .map(|(name, _)| name)
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::Unavailable {
                what: format!("`{}`", missing.join("` and `")),
                hint: "install iproute2 and nftables (apt-get install iproute2 nftables)".into(),
            });
        }
        if !Path::new("/dev/net/tun").exists() {
            return Err(AgentError::Unavailable {
                what: "/dev/net/tun".into(),
                hint: "load the tun module (modprobe tun)".into(),
            });
        }
        std::fs::write(IP_FORWARD, "1").map_err(|e| AgentError::io(IP_FORWARD, e))?;
        let value =
            std::fs::read_to_string(IP_FORWARD).map_err(|e| AgentError::io(IP_FORWARD, e))?;
        if value.trim() != "1" {
            return Err(AgentError::Network(format!(
                "{IP_FORWARD} reads {:?} after writing 1; guests would have no egress",
                value.trim()
            )));
        }
        match std::fs::read_to_string("/proc/net/route") {
            Ok(routes) => {
                for route in overlapping_routes(&routes) {
                    tracing::warn!(
                        route = %route,
                        "a host route overlaps the sandbox address ranges (10.11.0.0/16, \
                         10.12.0.0/16); hosts in the overlap are shadowed by sandbox routes"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read /proc/net/route"),
        }
        tracing::info!(egress = ?self.egress()?, "host networking prepared");
        Ok(())
    }

    async fn create(&self, slot: u32, options: &NetworkOptions) -> AgentResult<SlotNetwork> {
        check_slot(slot)?;
        let addrs = SlotAddresses::for_slot(slot);
        let egress = self.egress()?;
        let started = Instant::now();

        // The allocator says the slot is free, so anything still carrying its names is a leftover
        // (a destroy that failed half-way, a create whose caller went away). Removing it here
        // keeps one bad leftover from failing every later sandbox that gets this lowest slot.
        if netns_exists(&addrs.netns) || link_exists(&addrs.host_veth) {
            tracing::warn!(
                slot,
                "removing leftovers of an earlier network in this slot"
            );
            self.destroy(slot).await?;
        }

        if let Err(err) = self.build(&addrs, options, egress.as_deref()).await {
            if let Err(cleanup) = self.destroy(slot).await {
                tracing::warn!(slot, error = %cleanup, "rolling back a failed slot network failed");
            }
            return Err(err);
        }
        tracing::debug!(
            slot,
            host_ip = %addrs.host_ip,
            egress = ?egress,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "slot network created"
        );
        Ok(SlotNetwork {
            slot,
            addresses: addrs,
        })
    }

    async fn destroy(&self, slot: u32) -> AgentResult<()> {
        check_slot(slot)?;
        let addrs = SlotAddresses::for_slot(slot);
        let started = Instant::now();

        // Deleting the host veth takes its peer and the host route through it along with it;
        // deleting the namespace takes the TAP and the namespace's rules. Only what exists is
        // named, so "not found" never has to be told apart from real errors in `ip`'s output.
        let mut lines = Vec::new();
        if link_exists(&addrs.host_veth) {
            lines.push(format!("link del {}", addrs.host_veth));
        }
        if netns_exists(&addrs.netns) {
            lines.push(format!("netns del {}", addrs.netns));
        }
        let links = async {
            match self.ip_batch(None, &lines).await {
                // A concurrent destroy may have removed them between the check and the batch.
                Err(_) if !link_exists(&addrs.host_veth) && !netns_exists(&addrs.netns) => Ok(()),
                other => other,
            }
        };
        // The table and the links are independent, and both mostly wait in the kernel (a veth's
        // unregistration waits for RCU grace periods): removing them at once saves that time.
        let delete_table = nat::delete_host_table(slot);
        let table = self.run(&self.nft, &["-f", "-"], Some(&delete_table));
        if lines.is_empty() {
            table.await?;
        } else {
            tokio::try_join!(table, links)?;
        }
        tracing::debug!(
            slot,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "slot network removed"
        );
        Ok(())
    }

    async fn cleanup_stale(
        &self,
        range: std::ops::RangeInclusive<u32>,
        keep: &[u32],
    ) -> AgentResult<CleanupReport> {
        let keep: HashSet<u32> = keep.iter().copied().collect();
        let inventory = self.inventory().await?;
        let stale: BTreeSet<u32> = inventory
            .namespaces
            .iter()
            .chain(&inventory.links)
            .chain(&inventory.tables)
            .map(|(slot, _)| *slot)
            .filter(|slot| range.contains(slot) && !keep.contains(slot))
            .collect();

        let results: Vec<(u32, AgentResult<()>)> = futures::stream::iter(stale)
            .map(|slot| async move { (slot, self.destroy(slot).await) })
            .buffer_unordered(CLEANUP_PARALLELISM)
            .collect()
            .await;
        let mut removed = HashSet::new();
        let mut first_error = None;
        for (slot, result) in results {
            match result {
                Ok(()) => {
                    removed.insert(slot);
                }
                Err(err) => {
                    tracing::warn!(slot, error = %err, "removing a stale slot network failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }

        let names = |found: Vec<(u32, String)>| -> Vec<String> {
            let mut names: Vec<String> = found
                .into_iter()
                .filter(|(slot, _)| removed.contains(slot))
                .map(|(_, name)| name)
                .collect();
            names.sort();
            names
        };
        let report = CleanupReport {
            namespaces: names(inventory.namespaces),
            links: names(inventory.links),
            nft_tables: names(inventory.tables),
        };
        if !removed.is_empty() {
            tracing::info!(
                slots = removed.len(),
                namespaces = report.namespaces.len(),
                links = report.links.len(),
                nft_tables = report.nft_tables.len(),
                "removed stale slot networks"
            );
        }
        Ok(report)
    }
}

fn check_slot(slot: u32) -> AgentResult<()> {
    if (1..=MAX_SLOTS).contains(&slot) {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "network slot {slot} is outside 1..={MAX_SLOTS}"
        )))
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Asks the kernel (in the agent's own namespace) rather than /sys/class/net, whose view depends
/// on which namespace mounted /sys.
fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// `name` on PATH or in the usual sbin and bin directories; the bare name if it is nowhere (so the
/// error names it and [`Network::prepare_host`] reports it missing).
fn find_tool(name: &str) -> PathBuf {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The interface of the lowest-metric IPv4 default route in `/proc/net/route` text.
pub fn default_route_iface(proc_net_route: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(3)?,
                fields.get(6)?,
                fields.get(7)?,
            );
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let metric: u32 = metric.parse().ok()?;
            (*dest == "00000000" && *mask == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, iface.to_string()))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, iface)| iface)
}

/// The ranges slots take their addresses from: host addresses and veth pairs.
const SLOT_RANGES: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(10, 11, 0, 0), 16),
    (Ipv4Addr::new(10, 12, 0, 0), 16),
];

/// Routes in `/proc/net/route` text, other than default routes and our own, that overlap the
/// slot ranges, as `<net>/<len> dev <iface>`.
pub fn overlapping_routes(proc_net_route: &str) -> Vec<String> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
            // The kernel prints the network-order words as native integers.
            let dest = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.to_ne_bytes());
            let mask = u32::from_be_bytes(u32::from_str_radix(mask, 16).ok()?.to_ne_bytes());
            let len = u8::try_from(mask.count_ones()).ok()?;
            let ours = slots::slot_of_host_veth(iface).is_some();
            let overlaps = SLOT_RANGES
                .iter()
                .any(|&(net, net_len)| prefixes_overlap(dest, len, net, net_len));
            (len > 0 && !ours && overlaps).then(|| format!("{dest}/{len} dev {iface}"))
        })
        .collect()
}

/// Whether two prefixes share any address: they agree on the shorter one's bits.
fn prefixes_overlap(a: Ipv4Addr, a_len: u8, b: Ipv4Addr, b_len: u8) -> bool {
    let len = u32::from(a_len.min(b_len));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// The line number in `ip -batch`'s "Command failed -:N" message.
fn failed_batch_line(stderr: &str) -> Option<usize> {
    stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_the_lowest_metric_zero_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     ens4\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                     ens3\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     ens3\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_iface(table).as_deref(), Some("ens3"));
    }

    #[test]
    fn no_default_route_means_no_egress_interface() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     ens3\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                     ens5\t00000000\t0101A8C0\t0002\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route_iface(table),
            None,
            "routes that are not up do not count"
        );
        assert_eq!(default_route_iface(""), None);
    }

    #[test]
    fn routes_into_the_slot_ranges_are_found() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     ens4\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
                     ens5\t00000B0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     ens6\t00000D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     wrenn-v5\t06000C0A\t00000000\t0001\t0\t0\t0\tFEFFFFFF\t0\t0\t0\n";
        // On little-endian hosts only; the kernel's format is native-endian.
        if cfg!(target_endian = "little") {
            assert_eq!(
                overlapping_routes(table),
                vec!["10.0.0.0/8 dev ens4", "10.11.0.0/16 dev ens5"]
            );
        }
    }

    #[test]
    fn prefix_overlap() {
        let net = |a, b, c, d| Ipv4Addr::new(a, b, c, d);
        assert!(prefixes_overlap(net(10, 0, 0, 0), 8, net(10, 11, 0, 0), 16));
        assert!(prefixes_overlap(
            net(10, 11, 3, 0),
            24,
            net(10, 11, 0, 0),
            16
        ));
        assert!(!prefixes_overlap(
            net(10, 13, 0, 0),
            16,
            net(10, 12, 0, 0),
            16
        ));
        assert!(prefixes_overlap(net(1, 2, 3, 4), 0, net(10, 12, 0, 0), 16));
    }

    #[test]
    fn batch_errors_name_their_line() {
        assert_eq!(
            failed_batch_line("RTNETLINK answers: File exists\nCommand failed -:5"),
            Some(5)
        );
        assert_eq!(failed_batch_line("Cannot find device \"x\""), None);
    }

    #[test]
    fn slot_range_is_checked() {
        assert!(check_slot(0).is_err());
        assert!(check_slot(1).is_ok());
        assert!(check_slot(MAX_SLOTS).is_ok());
        assert!(check_slot(MAX_SLOTS + 1).is_err());
    }

    #[test]
    fn tools_are_found_outside_path_too() {
        let ip = find_tool("sh");
        assert!(ip.is_absolute(), "{}", ip.display());
        assert_eq!(
            find_tool("surely-not-a-tool-xyz"),
            PathBuf::from("surely-not-a-tool-xyz")
        );
    }
}
