//! Sandboxes without a VM, for unit tests of what the manager does around them.

use super::{Sandbox, SandboxManager, now_unix};
use crate::network::SlotAddresses;
use crate::sandbox::envd::EnvdClient;
use crate::sandbox::record::SandboxRecord;
use crate::vmm::{DiskFormat, VmHandle, VmmKind};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl SandboxManager {
    /// Registers a running sandbox `id` on `slot` whose VM is a made-up pid (`slot`), idle for
    /// `idle_for` seconds. Its envd is at `envd_base` (default: the slot's address).
    pub(crate) fn add_test_sandbox(
        self: &Arc<Self>,
        id: &str,
        slot: u32,
        timeout_sec: u32,
        idle_for: i64,
        envd_base: Option<&str>,
    ) -> Arc<Sandbox> {
        let dir = self.cfg.layout.sandbox_dir(id);
        std::fs::create_dir_all(&dir).expect("sandbox dir");
        let addresses = SlotAddresses::for_slot(slot);
        assert!(self.slots.reserve(slot), "slot {slot} taken");
        let record = SandboxRecord {
            sandbox_id: id.into(),
            vcpus: 1,
            memory_mb: 512,
            disk_size_mb: 1024,
            timeout_sec,
            team_id: String::new(),
            template_id: String::new(),
            template: String::new(),
            default_user: String::new(),
            default_env: Default::default(),
            metadata: Default::default(),
            slot,
            host_ip: addresses.host_ip.to_string(),
            created_at_unix: now_unix(),
            image_version: "test".into(),
            kernel_release: "test".into(),
            disk: dir.join("rootfs.ext4"),
            disk_format: DiskFormat::Raw,
            vm: VmHandle {
                kind: VmmKind::Qemu,
                pid: slot,
                start_time: 0,
                control_socket: dir.join("qmp.sock"),
                serial_log: dir.join("serial.log"),
            },
            state: Default::default(),
        };
        let envd = match envd_base {
            Some(base) => EnvdClient::with_base(id, base),
            None => EnvdClient::new(id, IpAddr::V4(addresses.host_ip)),
        };
        let sb = self.register(record, addresses, envd, dir, Default::default());
        sb.set_idle_for(idle_for);
        sb
    }
}

impl Sandbox {
    /// Backdates the last activity by `secs`.
    pub(crate) fn set_idle_for(&self, secs: i64) {
        self.last_active.store(now_unix() - secs, Ordering::Relaxed);
    }
}
