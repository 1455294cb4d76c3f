//! The Firecracker driver against a fake Firecracker API server, so neither Firecracker nor KVM
//! is needed.
//!
//! The fake records every request (method, path, JSON body). Full sequences are compared with
//! checked-in fixtures in `tests/fixtures/firecracker/`: a change in what the driver sends shows as
//! a diff there. After an intended change, re-bless them with
//! `UPDATE_FIXTURES=1 cargo test -p wrenn-agent --test firecracker_api` and review the diff.
//!
//! `start` itself runs end to end: `ip` and `firecracker` are small shell scripts (the fake `ip`
//! checks its `netns exec` arguments and execs the rest, the fake Firecracker records its pid and
//! arguments, then sleeps), and the fake API server binds the socket path the driver gave it.
//!
//! - `firecracker_api/mod.rs`: the fakes (API server, `ip`, `firecracker`, jailer) and fixtures;
//! - `firecracker_api/boot.rs`: booting, stopping and the API client;
//! - `firecracker_api/snapshot.rs`: pause, resume, snapshots, restore and the balloon.

// Named so that `cargo test -p wrenn-agent firecracker` selects these tests too.
#[path = "firecracker_api/mod.rs"]
mod firecracker;
