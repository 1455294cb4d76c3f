//! The nftables rule sets of a slot, as `nft -f -` text.
//!
//! Two tables per slot:
//! - inside the namespace, `table ip wrenn`: DNAT of the slot's host address to the guest, SNAT
//!   of the guest's traffic to the namespace's veth address, and (for VMMs without MMDS) DNAT of
//!   the guest's metadata requests to the agent's metadata server;
//! - on the host, `table ip wrenn-slot-<slot>`: forwarding for the slot's veth and masquerading of
//!   its traffic. One table per slot makes removal one atomic `delete table`, and a leak check is a
//!   look at `nft list tables`.
//!
//! Plain text rather than nft's JSON: it is what an operator reads in `nft list ruleset`, so the
//! tests below compare against exactly that.

use super::slots::{HOST_VETH_PREFIX, SlotAddresses, parse_slot};
use super::{GUEST_IP, METADATA_IP};

/// Name of the namespace's table (each namespace has its own nftables state).
pub const NAMESPACE_TABLE: &str = "wrenn";
/// Prefix of the host's per-slot tables: `wrenn-slot-<slot>`.
const HOST_TABLE_PREFIX: &str = "wrenn-slot-";

/// Name of slot `slot`'s table on the host.
pub fn host_table(slot: u32) -> String {
    format!("{HOST_TABLE_PREFIX}{slot}")
}

/// The namespace's rule set.
///
/// - Traffic from the host to the slot's host address is DNATed to the guest, whatever the port.
/// - With `metadata_port`, the guest's requests to 169.254.169.254:80 go to the agent's metadata
///   server on the host end of the veth. Only traffic arriving from the TAP is redirected, so the
///   rule cannot be used from the host side.
/// - The guest's traffic leaving through the veth is SNATed to the namespace's veth address: the
///   guest's own address is the same in every slot, so the host could not route replies to it.
pub fn namespace_ruleset(addrs: &SlotAddresses, metadata_port: Option<u16>) -> String {
    let SlotAddresses {
        host_ip,
        veth_ip,
        vpeer_ip,
        ns_veth,
        tap,
        ..
    } = addrs;
    let mut lines = vec![
        format!("table ip {NAMESPACE_TABLE} {{"),
        "\tchain prerouting {".to_string(),
        "\t\ttype nat hook prerouting priority dstnat; policy accept;".to_string(),
        format!("\t\tiifname \"{ns_veth}\" ip daddr {host_ip} dnat to {GUEST_IP}"),
    ];
    if let Some(port) = metadata_port {
        lines.push(format!(
            "\t\tiifname \"{tap}\" ip daddr {METADATA_IP} tcp dport 80 dnat to {veth_ip}:{port}"
        ));
    }
    lines.extend([
        "\t}".to_string(),
        "\tchain postrouting {".to_string(),
        "\t\ttype nat hook postrouting priority srcnat; policy accept;".to_string(),
        format!("\t\toifname \"{ns_veth}\" ip saddr {GUEST_IP} snat to {vpeer_ip}"),
        "\t}".to_string(),
        "}".to_string(),
    ]);
    to_text(lines)
}

/// The host's rule set for one slot.
///
/// It starts by creating and deleting the table, the usual nft idiom for "replace": loading it
/// twice (a retried create, a leftover of a crash) yields the same rules, not duplicates, and the
/// whole file is applied as one transaction.
///
/// - `forward`: the guest's own traffic is forwarded, and replies to it; nothing else is. A guest
///   cannot open connections to its neighbours through their host addresses, and a machine on
///   the LAN that routes 10.11.0.0/16 here cannot open connections to guests. (The host itself
///   reaches guests through its output path, which this chain does not see.) An `accept` here
///   does not override a `drop` in another table on the same hook, such as Docker's FORWARD
///   policy; the `drop`s here are binding whatever other tables say.
/// - `postrouting`: the slot's traffic is masqueraded when it leaves through `egress_iface`, or
///   through any interface but its own veth when no egress interface is known.
pub fn host_ruleset(
    addrs: &SlotAddresses,
    egress_iface: Option<&str>,
    metadata_port: Option<u16>,
) -> String {
    let table = host_table(addrs.slot);
    let veth = &addrs.host_veth;
    let vpeer = addrs.vpeer_ip;
    let masquerade = match egress_iface {
        Some(iface) => format!("\t\tip saddr {vpeer} oifname \"{iface}\" masquerade"),
        None => format!("\t\tip saddr {vpeer} oifname != \"{veth}\" masquerade"),
    };
    to_text(
        vec![
            format!("table ip {table} {{}}"),
            format!("delete table ip {table}"),
            format!("table ip {table} {{"),
            "\tchain forward {".to_string(),
            "\t\ttype filter hook forward priority filter; policy accept;".to_string(),
            format!("\t\tiifname \"{veth}\" oifname \"{HOST_VETH_PREFIX}*\" drop"),
            format!("\t\tiifname \"{veth}\" accept"),
            format!("\t\toifname \"{veth}\" ct state established,related accept"),
            format!("\t\toifname \"{veth}\" drop"),
            "\t}".to_string(),
            // The guest reaches nothing on the host itself (the agent's RPC port, the proxy, other
            // daemons) except the metadata server; replies to the host's own connections pass.
            "\tchain input {".to_string(),
            "\t\ttype filter hook input priority filter; policy accept;".to_string(),
            format!("\t\tiifname \"{veth}\" ct state established,related accept"),
        ]
        .into_iter()
        .chain(metadata_port.map(|p| format!("\t\tiifname \"{veth}\" tcp dport {p} accept")))
        .chain([
            format!("\t\tiifname \"{veth}\" drop"),
            "\t}".to_string(),
            "\tchain postrouting {".to_string(),
            "\t\ttype nat hook postrouting priority srcnat; policy accept;".to_string(),
            masquerade,
            "\t}".to_string(),
            "}".to_string(),
        ])
        .collect(),
    )
}

/// One rule per line, newline-terminated, as `nft -f` reads it.
fn to_text(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The text that removes slot `slot`'s host table, and succeeds when there is none (nft 1.0.6 has
/// no `destroy table`; creating it first makes the delete always find it).
pub fn delete_host_table(slot: u32) -> String {
    let table = host_table(slot);
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// The slots of the `wrenn-slot-<slot>` tables in `nft list tables` output (lines like
/// `table ip wrenn-slot-7`), in the order listed.
pub fn slots_in_table_list(listing: &str) -> Vec<u32> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("table"), Some("ip"), Some(name), None) => {
                    parse_slot(name.strip_prefix(HOST_TABLE_PREFIX)?)
                }
                _ => None,
            }
        })
        .collect()
}

/// Whether `name` can be put between double quotes in a rule: a Linux interface name (at most 15
/// bytes, no `/`, `:` or whitespace) that also has no quote or backslash.
pub fn valid_iface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= super::slots::MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '"' | '\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_ruleset_without_metadata() {
        let a = SlotAddresses::for_slot(5);
        assert_eq!(
            namespace_ruleset(&a, None),
            "table ip wrenn {\n\
             \tchain prerouting {\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"eth0\" ip daddr 10.11.0.5 dnat to 169.254.0.21\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"eth0\" ip saddr 169.254.0.21 snat to 10.12.0.11\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn namespace_ruleset_with_metadata_redirects_only_from_the_tap() {
        let a = SlotAddresses::for_slot(300);
        let rules = namespace_ruleset(&a, Some(8052));
        let expected =
            "\t\tiifname \"tap0\" ip daddr 169.254.169.254 tcp dport 80 dnat to 10.12.2.88:8052\n";
        assert!(rules.contains(expected), "{rules}");
        assert!(
            rules.contains("ip daddr 10.11.1.44 dnat to 169.254.0.21"),
            "{rules}"
        );
        assert!(rules.contains("snat to 10.12.2.89"), "{rules}");
        // The metadata rule sits in the prerouting chain, before its closing brace.
        let pre = rules.find("chain prerouting").expect("prerouting");
        let post = rules.find("chain postrouting").expect("postrouting");
        let meta = rules.find("169.254.169.254").expect("metadata rule");
        assert!(pre < meta && meta < post);
    }

    #[test]
    fn host_ruleset_with_egress_interface() {
        let a = SlotAddresses::for_slot(5);
        assert_eq!(
            host_ruleset(&a, Some("ens3"), Some(50052)),
            "table ip wrenn-slot-5 {}\n\
             delete table ip wrenn-slot-5\n\
             table ip wrenn-slot-5 {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"wrenn-v5\" oifname \"wrenn-v*\" drop\n\
             \t\tiifname \"wrenn-v5\" accept\n\
             \t\toifname \"wrenn-v5\" ct state established,related accept\n\
             \t\toifname \"wrenn-v5\" drop\n\
             \t}\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"wrenn-v5\" ct state established,related accept\n\
             \t\tiifname \"wrenn-v5\" tcp dport 50052 accept\n\
             \t\tiifname \"wrenn-v5\" drop\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.12.0.11 oifname \"ens3\" masquerade\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn host_ruleset_without_egress_masquerades_everything_but_the_veth() {
        let a = SlotAddresses::for_slot(32767);
        let rules = host_ruleset(&a, None, None);
        assert!(
            !rules.contains("dport"),
            "no metadata port, no exception: {rules}"
        );
        assert!(
            rules.contains("\t\tip saddr 10.12.255.255 oifname != \"wrenn-v32767\" masquerade\n"),
            "{rules}"
        );
        assert!(
            rules.starts_with("table ip wrenn-slot-32767 {}\ndelete table ip wrenn-slot-32767\n")
        );
    }

    #[test]
    fn braces_balance() {
        for rules in [
            namespace_ruleset(&SlotAddresses::for_slot(1), Some(80)),
            host_ruleset(&SlotAddresses::for_slot(1), None, Some(1)),
        ] {
            let open = rules.matches('{').count();
            let close = rules.matches('}').count();
            assert_eq!(open, close, "{rules}");
        }
    }

    #[test]
    fn delete_text_tolerates_a_missing_table() {
        assert_eq!(
            delete_host_table(9),
            "table ip wrenn-slot-9 {}\ndelete table ip wrenn-slot-9\n"
        );
    }

    #[test]
    fn table_listing_yields_our_slots_only() {
        let listing = "table ip wrenn-slot-7\n\
                       table inet filter\n\
                       table ip nat\n\
                       table ip wrenn-slot-32767\n\
                       table ip6 wrenn-slot-8\n\
                       table ip wrenn-slot-012\n\
                       table ip wrenn-slot-40000\n\
                       table ip wrenn\n\
                       table ip wrenn-slot-3 extra\n\
                       \n";
        assert_eq!(slots_in_table_list(listing), vec![7, 32767]);
        assert!(slots_in_table_list("").is_empty());
    }

    #[test]
    fn interface_names_are_checked_before_quoting() {
        for ok in ["eth0", "ens3", "wrenn-v1", "enp0s31f6", "br-0123456789ab"] {
            assert!(valid_iface_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\"b",
            "a\\b",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_iface_name(bad), "{bad}");
        }
    }
}
