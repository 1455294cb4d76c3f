//! The sandbox manager: the agent's live map of sandboxes is the source of truth for what runs on
//! this host; the control plane reconciles against it.
//!
//! Every operation on one sandbox that changes its life (destroy, later pause and resume) holds
//! that sandbox's lifecycle lock, so they never interleave. Each sandbox's background tasks hang off
//! its own cancellation token, cancelled when it goes away.

use super::envd::{EnvdClient, InitRequest, rfc3339_now};
use super::metrics::{self, MetricPoint, MetricsRing, Tiers};
use super::record::{RecordState, SandboxRecord};
use crate::disk;
use crate::error::{AgentError, AgentResult, error_chain};
use crate::image::GuestImage;
use crate::layout::{Layout, validate_sandbox_id};
use crate::metadata::MetadataLookup;
use crate::network::{GUEST_MAC, Network, NetworkOptions, SlotAddresses, SlotAllocator, TAP_NAME};
use crate::vmm::{GuestMetadata, VmSpec, Vmm};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod page_server;
mod reaper;
mod snapshot;
mod template_spare;
#[cfg(test)]
mod test_support;

pub use snapshot::{
    PauseReport, ResumeOverrides, SNAPSHOT_MANIFEST, SnapshotManifest, TEMPLATE_MANIFEST,
};

pub use reaper::REPORT_WINDOW;
use reaper::RecentIds;
const MAX_VCPUS: u32 = 64;
const MAX_MEMORY_MB: u32 = 256 * 1024;
const MIN_MEMORY_MB: u32 = 128;
const MAX_DISK_MB: u32 = 1024 * 1024;
/// Lines of the serial console quoted when a boot fails.
const SERIAL_TAIL_LINES: usize = 30;

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub layout: Layout,
    pub default_vcpus: u32,
    pub default_memory_mb: u32,
    pub default_disk_mb: u32,
    /// The boot watchdog: a guest whose envd does not answer within this is destroyed.
    pub boot_timeout: Duration,
    /// Port of the agent's metadata server, for VMMs without MMDS (QEMU).
    pub metadata_port: Option<u16>,
    /// The network slots this agent may use (inclusive); two agents on one host use disjoint ones.
    pub slot_range: (u32, u32),
}

/// What the control plane asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub sandbox_id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub timeout_sec: u32,
    pub disk_size_mb: u32,
    pub team_id: String,
    pub template_id: String,
    pub default_user: String,
    pub default_env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    Running,
    Pausing,
    /// Frozen briefly while a template is taken from it; it runs again afterwards.
    Snapshotting,
    Stopping,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Running => "running",
            SandboxStatus::Pausing => "pausing",
            SandboxStatus::Snapshotting => "snapshotting",
            SandboxStatus::Stopping => "stopping",
        }
    }
}

/// One live sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub addresses: SlotAddresses,
    pub envd: EnvdClient,
    pub dir: PathBuf,
    record: Mutex<SandboxRecord>,
    status: Mutex<SandboxStatus>,
    /// Shared with the sandbox's paused entry, so pause, resume and destroy of one id never
    /// interleave even across the switch between the two maps.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    last_active: AtomicI64,
    metrics: Mutex<MetricsRing>,
    tasks: CancellationToken,
}

impl Sandbox {
    pub fn record(&self) -> SandboxRecord {
        lock(&self.record).clone()
    }

    pub fn status(&self) -> SandboxStatus {
        *lock(&self.status)
    }

    pub fn last_active_unix(&self) -> i64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Marks activity for the idle timer.
    pub fn touch(&self) {
        self.last_active.store(now_unix(), Ordering::Relaxed);
    }

    /// The sandbox, if it accepts operations now.
    fn ensure_running(&self) -> AgentResult<()> {
        match self.status() {
            SandboxStatus::Running => Ok(()),
            s => Err(AgentError::NotRunning {
                id: self.id.clone(),
                state: s.as_str().into(),
            }),
        }
    }
}

/// A sandbox sleeping in a snapshot in its folder: no VM, no network, no slot.
#[derive(Debug)]
pub struct PausedSandbox {
    pub record: SandboxRecord,
    pub dir: PathBuf,
    lifecycle: Arc<tokio::sync::Mutex<()>>,
}

/// What the manager needs from the port proxy around a pause: stop new traffic and let the
/// in-flight requests finish (or close them), and open up again when the pause fails.
#[async_trait::async_trait]
pub trait TrafficGate: Send + Sync {
    /// Refuses new proxied traffic, waits up to `grace` for in-flight traffic, force-closes the
    /// rest. Returns how many were force-closed.
    async fn drain(&self, sandbox_id: &str, grace: Duration) -> usize;
    /// Lets traffic through again.
    fn undrain(&self, sandbox_id: &str);
    /// Forgets the sandbox's pooled connections (it paused or went away).
    fn evict(&self, sandbox_id: &str);
}

type DestroyHook = Box<dyn Fn(&str) + Send + Sync>;

pub struct SandboxManager {
    cfg: ManagerConfig,
    vmm: Arc<dyn Vmm>,
    network: Arc<dyn Network>,
    slots: SlotAllocator,
    boxes: RwLock<HashMap<String, Arc<Sandbox>>>,
    /// Paused sandboxes, by id. A sandbox is in exactly one of `boxes` and `paused`.
    paused: RwLock<HashMap<String, Arc<PausedSandbox>>>,
    traffic: RwLock<Option<Arc<dyn TrafficGate>>>,
    /// Userfaultfd page servers of restored Firecracker sandboxes, and their VMs' pids (what a
    /// page server that gives up kills).
    page_servers: Mutex<HashMap<String, crate::uffd::PageServer>>,
    page_server_vm_pids: Arc<Mutex<HashMap<String, u32>>>,
    /// Identities for the metadata server, by the slot's namespace address. Filled before the VM
    /// boots (envd asks at boot), removed on destroy.
    metadata_by_source: RwLock<HashMap<IpAddr, GuestMetadata>>,
    /// Ids being created, so two creates of one id cannot race.
    creating: Mutex<std::collections::HashSet<String>>,
    /// Sandboxes the idle reaper paused, reported by `ListSandboxes` for [`REPORT_WINDOW`].
    auto_paused: RecentIds,
    /// Sandboxes the idle reaper destroyed (pause failed), reported likewise.
    ttl_destroyed: RecentIds,
    /// Sandboxes the reaper is working on, so a slow pause is not started twice.
    reaping: Mutex<std::collections::HashSet<String>>,
    /// Templates whose spare RAM file is being copied (see `template_spare`).
    spare_refills: Mutex<std::collections::HashSet<String>>,
    on_destroy: RwLock<Vec<DestroyHook>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SandboxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxManager")
            .field("vmm", &self.vmm)
            .field("sandboxes", &read(&self.boxes).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl SandboxManager {
    pub fn new(cfg: ManagerConfig, vmm: Arc<dyn Vmm>, network: Arc<dyn Network>) -> Arc<Self> {
        Arc::new(Self {
            slots: SlotAllocator::with_range(cfg.slot_range.0, cfg.slot_range.1),
            cfg,
            vmm,
            network,
            boxes: RwLock::new(HashMap::new()),
            paused: RwLock::new(HashMap::new()),
            traffic: RwLock::new(None),
            page_servers: Mutex::new(HashMap::new()),
            page_server_vm_pids: Arc::new(Mutex::new(HashMap::new())),
            metadata_by_source: RwLock::new(HashMap::new()),
            creating: Mutex::new(Default::default()),
            auto_paused: RecentIds::default(),
            ttl_destroyed: RecentIds::default(),
            reaping: Mutex::new(Default::default()),
            spare_refills: Mutex::new(Default::default()),
            on_destroy: RwLock::new(Vec::new()),
            shutdown: CancellationToken::new(),
        })
    }

    pub fn vmm(&self) -> &Arc<dyn Vmm> {
        &self.vmm
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// Called with the sandbox id whenever a sandbox goes away (the proxy evicts its connections).
    pub fn on_destroy(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        write(&self.on_destroy).push(Box::new(hook));
    }

    /// Lets pauses drain the port proxy first.
    pub fn set_traffic_gate(&self, gate: Arc<dyn TrafficGate>) {
        *write(&self.traffic) = Some(gate);
    }

    fn traffic_gate(&self) -> Option<Arc<dyn TrafficGate>> {
        read(&self.traffic).clone()
    }

    /// The sandbox if it exists and is running; every operation on a sandbox starts here.
    pub fn get(&self, id: &str) -> AgentResult<Arc<Sandbox>> {
        let Some(sb) = read(&self.boxes).get(id).cloned() else {
            if read(&self.paused).contains_key(id) {
                return Err(AgentError::NotRunning {
                    id: id.to_string(),
                    state: "paused".into(),
                });
            }
            return Err(AgentError::SandboxNotFound(id.to_string()));
        };
        sb.ensure_running()?;
        Ok(sb)
    }

    /// Paused sandboxes, by id.
    pub fn list_paused(&self) -> Vec<Arc<PausedSandbox>> {
        let mut v: Vec<_> = read(&self.paused).values().cloned().collect();
        v.sort_by(|a, b| a.record.sandbox_id.cmp(&b.record.sandbox_id));
        v
    }

    /// Like [`get`](Self::get), and counts as activity for the idle timer.
    pub fn get_active(&self, id: &str) -> AgentResult<Arc<Sandbox>> {
        let sb = self.get(id)?;
        sb.touch();
        Ok(sb)
    }

    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        let mut v: Vec<_> = read(&self.boxes).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Sandboxes the idle reaper paused within the last [`REPORT_WINDOW`].
    pub fn auto_paused_ids(&self) -> Vec<String> {
        self.auto_paused.current()
    }

    /// Sandboxes the idle reaper destroyed (they could not be paused) within the last
    /// [`REPORT_WINDOW`].
    pub fn ttl_destroyed_ids(&self) -> Vec<String> {
        self.ttl_destroyed.current()
    }

    pub fn ping(&self, id: &str) -> AgentResult<()> {
        self.get_active(id).map(|_| ())
    }

    fn validate(&self, req: &mut CreateRequest) -> AgentResult<()> {
        validate_sandbox_id(&req.sandbox_id).map_err(AgentError::InvalidArgument)?;
        if req.vcpus == 0 {
            req.vcpus = self.cfg.default_vcpus;
        }
        if req.memory_mb == 0 {
            req.memory_mb = self.cfg.default_memory_mb;
        }
        if req.disk_size_mb == 0 {
            req.disk_size_mb = self.cfg.default_disk_mb;
        }
        if req.vcpus > MAX_VCPUS {
            return Err(AgentError::InvalidArgument(format!(
                "vcpus must be at most {MAX_VCPUS}, got {}",
                req.vcpus
            )));
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&req.memory_mb) {
            return Err(AgentError::InvalidArgument(format!(
                "memory_mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}, got {}",
                req.memory_mb
            )));
        }
        if req.disk_size_mb > MAX_DISK_MB {
            return Err(AgentError::InvalidArgument(format!(
                "disk_size_mb must be at most {MAX_DISK_MB}, got {}",
                req.disk_size_mb
            )));
        }
        let snapshot_template = !req.template_id.is_empty()
            && validate_sandbox_id(&req.template_id).is_ok()
            && self
                .template_dir(&req.template_id)
                .join(TEMPLATE_MANIFEST)
                .exists();
        let base = req.template.is_empty()
            || matches!(req.template.as_str(), "minimal" | "base" | "minimal-ubuntu");
        if !snapshot_template && !base {
            return Err(AgentError::SandboxNotFound(format!(
                "template {:?} (id {:?}) is not on this host",
                req.template, req.template_id
            )));
        }
        Ok(())
    }

    /// Boots a sandbox and returns once its envd has answered and taken its defaults.
    pub async fn create(self: &Arc<Self>, mut req: CreateRequest) -> AgentResult<Arc<Sandbox>> {
        self.validate(&mut req)?;
        let id = req.sandbox_id.clone();
        {
            let mut creating = lock(&self.creating);
            if read(&self.boxes).contains_key(&id)
                || read(&self.paused).contains_key(&id)
                || !creating.insert(id.clone())
            {
                return Err(AgentError::SandboxExists(id));
            }
        }
        let from_template = !req.template_id.is_empty()
            && self
                .template_dir(&req.template_id)
                .join(TEMPLATE_MANIFEST)
                .exists();
        let result = if from_template {
            self.create_from_template(req).await
        } else {
            self.create_inner(req).await
        };
        lock(&self.creating).remove(&id);
        result
    }

    async fn create_inner(self: &Arc<Self>, req: CreateRequest) -> AgentResult<Arc<Sandbox>> {
        let started = std::time::Instant::now();
        let id = req.sandbox_id.clone();
        let image = GuestImage::current(self.cfg.layout.images())?;
        let dir = self.cfg.layout.sandbox_dir(&id);
        if dir.exists() {
            return Err(AgentError::SandboxExists(id));
        }
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let mut undo = Undo::new(self.clone(), id.clone(), dir.clone());
        image.pin(&sandbox_pin(&id))?;

        let disk_format = self.vmm.disk_format();
        let disk_path = dir.join(match disk_format {
            crate::vmm::DiskFormat::Qcow2 => "rootfs.qcow2",
            crate::vmm::DiskFormat::Raw => "rootfs.ext4",
        });
        disk::create(
            disk_format,
            &image.rootfs(),
            &disk_path,
            u64::from(req.disk_size_mb) << 20,
        )
        .await?;

        let slot = self.slots.allocate()?;
        undo.slot = Some(slot);
        let net = self
            .network
            .create(
                slot,
                &NetworkOptions {
                    metadata_port: self.cfg.metadata_port,
                },
            )
            .await?;
        undo.network = true;
        let addresses = net.addresses.clone();
        let metadata = GuestMetadata {
            instance_id: id.clone(),
            env_id: req.template_id.clone(),
            address: None,
        };
        write(&self.metadata_by_source).insert(IpAddr::V4(addresses.vpeer_ip), metadata.clone());

        let spec = VmSpec {
            sandbox_id: id.clone(),
            vcpus: req.vcpus,
            memory_mib: req.memory_mb,
            kernel: image.kernel(),
            initrd: image.initrd(),
            boot_args: image.manifest.boot_args.clone(),
            disk: disk_path.clone(),
            disk_format,
            netns: addresses.netns.clone(),
            tap: TAP_NAME.into(),
            guest_mac: GUEST_MAC.into(),
            tx_rate_limit: None,
            run_dir: dir.clone(),
            memory_path: dir.join("memory.raw"),
            metadata,
        };
        let vm = self.vmm.start(&spec).await?;
        undo.vm = Some(vm.clone());
        let record = SandboxRecord {
            sandbox_id: id.clone(),
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            disk_size_mb: req.disk_size_mb,
            timeout_sec: req.timeout_sec,
            team_id: req.team_id.clone(),
            template_id: req.template_id.clone(),
            template: req.template.clone(),
            default_user: req.default_user.clone(),
            default_env: req.default_env.clone(),
            metadata: req.metadata.clone(),
            slot,
            host_ip: addresses.host_ip.to_string(),
            created_at_unix: now_unix(),
            image_version: image.manifest.version.clone(),
            kernel_release: image.manifest.kernel_release.clone(),
            disk: disk_path,
            disk_format,
            vm: vm.clone(),
            state: RecordState::Running,
        };
        // Persisted before the (slow) wait, so an agent crash mid-boot still finds this VM.
        record.save(&dir)?;

        let envd = EnvdClient::new(&id, IpAddr::V4(addresses.host_ip));
        let alive_vm = vm.clone();
        let boot = envd
            .wait_ready(self.cfg.boot_timeout, move || alive_vm.is_alive())
            .await;
        let booted_in = match boot {
            Ok(d) => d,
            Err(e) => {
                let tail = serial_tail(&vm.serial_log, SERIAL_TAIL_LINES);
                tracing::warn!(sandbox = %id, error = %e, serial = %tail, "boot failed");
                return Err(AgentError::Vmm(format!(
                    "{}; last lines of the serial console:\n{tail}",
                    error_chain(&e)
                )));
            }
        };
        envd.init(&init_request(&record)).await?;

        let sandbox = self.register(record, addresses, envd, dir, Default::default());
        undo.disarm();
        tracing::info!(
            sandbox = %id,
            slot,
            vmm = %self.vmm.describe(),
            envd_after_ms = booted_in.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "sandbox created"
        );
        Ok(sandbox)
    }

    /// Destroys a sandbox: VM, network, disk, files. Waits for a running lifecycle operation.
    pub async fn destroy(&self, id: &str) -> AgentResult<()> {
        let found = read(&self.boxes).get(id).cloned();
        let Some(sb) = found else {
            return self.destroy_paused(id).await;
        };
        let _life = sb.lifecycle.lock().await;
        if !read(&self.boxes).contains_key(id) {
            // It was paused (or destroyed) while we waited.
            drop(_life);
            return self.destroy_paused(id).await;
        }
        *lock(&sb.status) = SandboxStatus::Stopping;
        sb.tasks.cancel();
        let record = sb.record();
        let result = self
            .teardown(
                id,
                Some(&record.vm),
                Some(record.slot),
                &sb.dir,
                Some(sb.addresses.vpeer_ip.into()),
            )
            .await;
        write(&self.boxes).remove(id);
        tracing::info!(sandbox = %id, "sandbox destroyed");
        result
    }

    /// Destroys a paused sandbox: its folder holds everything (snapshot, disk, record).
    async fn destroy_paused(&self, id: &str) -> AgentResult<()> {
        let found = read(&self.paused).get(id).cloned();
        let paused = found.ok_or_else(|| AgentError::SandboxNotFound(id.to_string()))?;
        let _life = paused.lifecycle.lock().await;
        if write(&self.paused).remove(id).is_none() {
            // It was resumed while we waited: destroy the running one.
            drop(_life);
            return Box::pin(self.destroy(id)).await;
        }
        let result = self.teardown(id, None, None, &paused.dir, None).await;
        tracing::info!(sandbox = %id, "paused sandbox destroyed");
        result
    }

    /// Tears down everything a sandbox may hold; keeps going after errors and returns the first.
    async fn teardown(
        &self,
        id: &str,
        vm: Option<&crate::vmm::VmHandle>,
        slot: Option<u32>,
        dir: &std::path::Path,
        metadata_source: Option<IpAddr>,
    ) -> AgentResult<()> {
        let mut first: Option<AgentError> = None;
        for hook in read(&self.on_destroy).iter() {
            hook(id);
        }
        if let Some(vm) = vm
            && let Err(e) = self.vmm.stop(vm).await
        {
            tracing::error!(sandbox = %id, error = %e, "stopping the VM failed");
            first.get_or_insert(e);
        }
        self.stop_page_server(id);
        if let Some(ip) = metadata_source {
            write(&self.metadata_by_source).remove(&ip);
        }
        if let Some(slot) = slot {
            match self.network.destroy(slot).await {
                Ok(()) => self.slots.release(slot),
                Err(e) => {
                    // The slot stays reserved so no new sandbox lands on half-removed state;
                    // the next start's sweep removes it.
                    tracing::error!(sandbox = %id, slot, error = %e, "removing the network failed");
                    first.get_or_insert(e);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first.get_or_insert(AgentError::io(dir, e));
        }
        crate::image::unpin(self.cfg.layout.images(), &sandbox_pin(id));
        let snap = self.cfg.layout.snapshots().join(id);
        if let Err(e) = std::fs::remove_dir_all(&snap)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first.get_or_insert(AgentError::io(&snap, e));
        }
        first.map_or(Ok(()), Err)
    }

    /// Finds the sandboxes a previous agent left running and adopts them; removes what is left of
    /// the others (and of anything the agent created and lost track of).
    pub async fn recover(self: &Arc<Self>) -> AgentResult<RecoveryReport> {
        let mut report = RecoveryReport::default();
        self.network.prepare_host().await?;
        self.sweep_template_spares();
        let root = self.cfg.layout.sandboxes();
        std::fs::create_dir_all(&root).map_err(|e| AgentError::io(&root, e))?;
        let entries = std::fs::read_dir(&root).map_err(|e| AgentError::io(&root, e))?;
        let mut keep_slots = Vec::new();
        let mut known_pids = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !dir.is_dir() || validate_sandbox_id(&name).is_err() {
                continue;
            }
            let record = match SandboxRecord::load(&dir) {
                Ok(r) if r.sandbox_id == name => r,
                _ => {
                    tracing::warn!(sandbox = %name, "no usable record; removing its folder");
                    let _ = std::fs::remove_dir_all(&dir);
                    report.removed.push(name);
                    continue;
                }
            };
            if record.state == RecordState::Paused {
                if !Self::has_snapshot(&dir) {
                    tracing::error!(sandbox = %name, "paused sandbox without a complete snapshot; it cannot be resumed");
                }
                self.adopt_paused(record, dir);
                report.paused.push(name);
                continue;
            }
            let addresses = SlotAddresses::for_slot(record.slot);
            let netns_ok = std::path::Path::new("/run/netns")
                .join(&addresses.netns)
                .exists();
            let committed = Self::has_snapshot(&dir);
            if record.vm.is_alive() && netns_ok && self.slots.reserve(record.slot) {
                if committed {
                    // The previous agent died after committing a pause: finish it.
                    tracing::warn!(sandbox = %name, "finishing a pause interrupted by a crash");
                    let _ = self.vmm.stop(&record.vm).await;
                    match self.network.destroy(record.slot).await {
                        Ok(()) => self.slots.release(record.slot),
                        Err(e) => {
                            tracing::error!(sandbox = %name, error = %e, "removing the network failed")
                        }
                    }
                    self.adopt_paused(record, dir);
                    report.paused.push(name);
                    continue;
                }
                known_pids.push(record.vm.pid);
                keep_slots.push(record.slot);
                // A crash in the middle of a pause leaves the vCPUs frozen; thawing a running VM
                // is harmless.
                if let Err(e) = self.vmm.resume_vcpus(&record.vm).await {
                    tracing::warn!(sandbox = %name, error = %e, "could not make sure the adopted VM runs");
                }
                self.adopt(record, addresses, dir);
                report.adopted.push(name);
            } else if committed {
                tracing::warn!(sandbox = %name, "its VM is gone but its pause snapshot is complete; keeping it paused");
                self.adopt_paused(record, dir);
                report.paused.push(name);
            } else {
                tracing::warn!(sandbox = %name, "its VM is gone; cleaning up");
                let _ = self
                    .teardown(&name, Some(&record.vm), None, &dir, None)
                    .await;
                report.removed.push(name);
            }
        }
        report.orphan_vms = kill_orphan_vms(&root, &known_pids).await;
        let (first, last) = self.cfg.slot_range;
        let cleanup = self
            .network
            .cleanup_stale(first..=last, &keep_slots)
            .await?;
        report.stale_namespaces = cleanup.namespaces.len();
        tracing::info!(
            adopted = report.adopted.len(),
            paused = report.paused.len(),
            removed = report.removed.len(),
            orphan_vms = report.orphan_vms,
            stale_namespaces = report.stale_namespaces,
            "recovered sandboxes from a previous run"
        );
        Ok(report)
    }

    fn adopt(self: &Arc<Self>, record: SandboxRecord, addresses: SlotAddresses, dir: PathBuf) {
        let id = record.sandbox_id.clone();
        write(&self.metadata_by_source).insert(
            IpAddr::V4(addresses.vpeer_ip),
            GuestMetadata {
                instance_id: id.clone(),
                env_id: record.template_id.clone(),
                address: None,
            },
        );
        let envd = EnvdClient::new(&id, IpAddr::V4(addresses.host_ip));
        self.register(record, addresses, envd, dir, Default::default());
    }

    /// Puts a running sandbox in the live map and starts its sampler.
    fn register(
        self: &Arc<Self>,
        record: SandboxRecord,
        addresses: SlotAddresses,
        envd: EnvdClient,
        dir: PathBuf,
        lifecycle: Arc<tokio::sync::Mutex<()>>,
    ) -> Arc<Sandbox> {
        let sandbox = Arc::new(Sandbox {
            id: record.sandbox_id.clone(),
            addresses,
            envd,
            dir,
            record: Mutex::new(record),
            status: Mutex::new(SandboxStatus::Running),
            lifecycle,
            last_active: AtomicI64::new(now_unix()),
            metrics: Mutex::new(MetricsRing::default()),
            tasks: self.shutdown.child_token(),
        });
        write(&self.boxes).insert(sandbox.id.clone(), sandbox.clone());
        // Running again: earlier reaper reports about this id are stale now.
        self.auto_paused.forget(&sandbox.id);
        self.ttl_destroyed.forget(&sandbox.id);
        self.spawn_sampler(&sandbox);
        sandbox
    }

    /// Samples the VMM process's CPU and memory and the disk's allocation every second.
    fn spawn_sampler(self: &Arc<Self>, sb: &Arc<Sandbox>) {
        let sb = sb.clone();
        let token = sb.tasks.clone();
        tokio::spawn(async move {
            let record = sb.record();
            let ticks_per_sec = metrics::clock_ticks() as f64;
            let mut prev: Option<(u64, std::time::Instant)> = None;
            let mut interval =
                tokio::time::interval(Duration::from_secs(metrics::SAMPLE_INTERVAL_SECS));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = interval.tick() => {}
                }
                let Some((ticks, rss)) = metrics::process_usage(record.vm.pid) else {
                    continue;
                };
                let now = std::time::Instant::now();
                let cpu = match prev {
                    Some((t0, i0)) => {
                        let secs = now.duration_since(i0).as_secs_f64().max(1e-3);
                        let used = (ticks.saturating_sub(t0)) as f64 / ticks_per_sec;
                        (used / secs / f64::from(record.vcpus.max(1)) * 100.0).clamp(0.0, 100.0)
                    }
                    None => 0.0,
                };
                prev = Some((ticks, now));
                let point = MetricPoint {
                    timestamp_unix: now_unix(),
                    cpu_pct: cpu,
                    mem_bytes: rss as i64,
                    disk_bytes: disk::allocated_bytes(&record.disk) as i64,
                };
                lock(&sb.metrics).push(point);
            }
        });
    }

    pub fn metrics(&self, id: &str, range: &str) -> AgentResult<Vec<MetricPoint>> {
        let sb = self.get(id)?;
        let points = lock(&sb.metrics).range(range, now_unix());
        points.map_err(AgentError::InvalidArgument)
    }

    /// Returns every tier, clears the ring and stops sampling (the control plane persists the
    /// points before a pause or destroy).
    pub fn flush_metrics(&self, id: &str) -> AgentResult<Tiers> {
        let sb = read(&self.boxes)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::SandboxNotFound(id.to_string()))?;
        let tiers = lock(&sb.metrics).flush();
        Ok(tiers)
    }

    /// Destroys every sandbox (the Terminate RPC: the host is being removed).
    pub async fn destroy_all(&self) {
        let ids: Vec<String> = self
            .list()
            .iter()
            .map(|sb| sb.id.clone())
            .chain(
                self.list_paused()
                    .iter()
                    .map(|p| p.record.sandbox_id.clone()),
            )
            .collect();
        for id in ids {
            if let Err(e) = self.destroy(&id).await {
                tracing::error!(sandbox = %id, error = %e, "destroy failed");
            }
        }
    }

    /// Stops background tasks; running VMs are left running for the next agent to adopt.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// The name of a sandbox's pin on its guest image.
pub(crate) fn sandbox_pin(id: &str) -> String {
    format!("sandbox.{id}")
}

/// The `/init` a fresh or adopted sandbox gets: its defaults and the current time.
///
/// The identity variables are sent too: envd also learns them from the metadata service, but its
/// poll may still be running when the first command arrives on a busy host.
pub fn init_request(record: &SandboxRecord) -> InitRequest {
    let mut env = record.default_env.clone();
    env.insert("WRENN_SANDBOX_ID".into(), record.sandbox_id.clone());
    env.insert("WRENN_TEMPLATE_ID".into(), record.template_id.clone());
    InitRequest {
        env_vars: Some(env),
        default_user: (!record.default_user.is_empty()).then(|| record.default_user.clone()),
        default_workdir: None,
        timestamp: Some(rfc3339_now()),
    }
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub adopted: Vec<String>,
    /// Paused sandboxes found (their snapshots stay on disk until resumed or destroyed).
    pub paused: Vec<String>,
    pub removed: Vec<String>,
    pub orphan_vms: usize,
    pub stale_namespaces: usize,
}

impl MetadataLookup for SandboxManager {
    fn metadata_for(&self, source: IpAddr) -> Option<GuestMetadata> {
        read(&self.metadata_by_source).get(&source).cloned()
    }
}

impl crate::proxy::ProxyTargets for SandboxManager {
    fn resolve(&self, sandbox_id: &str) -> Result<IpAddr, crate::proxy::ProxyRefusal> {
        let sb = read(&self.boxes)
            .get(sandbox_id)
            .cloned()
            .ok_or(crate::proxy::ProxyRefusal::NotFound)?;
        match sb.status() {
            SandboxStatus::Running => Ok(IpAddr::V4(sb.addresses.host_ip)),
            s => Err(crate::proxy::ProxyRefusal::NotRunning(s.as_str().into())),
        }
    }

    fn touch(&self, sandbox_id: &str) {
        if let Some(sb) = read(&self.boxes).get(sandbox_id) {
            sb.touch();
        }
    }
}

/// Rolls a half-created sandbox back unless disarmed.
struct Undo {
    mgr: Arc<SandboxManager>,
    id: String,
    dir: PathBuf,
    slot: Option<u32>,
    network: bool,
    vm: Option<crate::vmm::VmHandle>,
    armed: bool,
}

impl Undo {
    fn new(mgr: Arc<SandboxManager>, id: String, dir: PathBuf) -> Self {
        Self {
            mgr,
            id,
            dir,
            slot: None,
            network: false,
            vm: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mgr = self.mgr.clone();
        let id = self.id.clone();
        let dir = self.dir.clone();
        let vm = self.vm.take();
        let slot = self.slot;
        let network = self.network;
        // Runs even when the create future itself was dropped (client gone).
        tokio::spawn(async move {
            let source = slot.map(|s| IpAddr::V4(SlotAddresses::for_slot(s).vpeer_ip));
            let net_slot = if network { slot } else { None };
            if let Err(e) = mgr.teardown(&id, vm.as_ref(), net_slot, &dir, source).await {
                tracing::error!(sandbox = %id, error = %e, "rolling back a failed create");
            }
            if let (Some(s), false) = (slot, network) {
                mgr.slots.release(s);
            }
            tracing::info!(sandbox = %id, "rolled back a failed create");
        });
    }
}

/// The last `n` lines of a serial log, for error messages.
pub fn serial_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills VMs of this agent (their command line names a file under `sandboxes_dir`) that no record
/// accounts for: an agent that crashed between starting a VM and saving its record. Another agent
/// with another data directory on the same host keeps its VMs. Returns how many it killed.
async fn kill_orphan_vms(sandboxes_dir: &std::path::Path, known: &[u32]) -> usize {
    let marker = sandboxes_dir.display().to_string();
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if known.contains(&pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args
            .iter()
            .any(|a| String::from_utf8_lossy(a).contains(&marker));
        let is_vmm = args
            .first()
            .is_some_and(|a| a.ends_with(b"qemu-system-x86_64") || a.ends_with(b"firecracker"));
        if is_ours
            && is_vmm
            && let Some(start) = crate::vmm::process::start_time(pid)
        {
            tracing::warn!(pid, "killing a VM no sandbox record accounts for");
            crate::vmm::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            crate::vmm::process::wait_gone(pid, start, Duration::from_secs(5)).await;
            killed += 1;
        }
    }
    killed
}
