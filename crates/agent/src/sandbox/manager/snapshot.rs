//! Pause, resume and snapshot templates.
//!
//! A paused sandbox keeps everything in its own folder: the record (state `paused`), the disk,
//! the device state (`vmstate`), guest memory (QEMU: the shared RAM file `memory.raw` used in
//! place; Firecracker: build files from the page-server format) with its checksummed
//! `memory.header`, and last, written atomically, `snapshot.json`. That manifest is the commit
//! point: a snapshot without it is incomplete and never resumed. A template is the same set of
//! files, copied into `templates/<template id>/` with `template.json` (and for QEMU a spare copy
//! of its RAM file, see `template_spare`).
//!
//! Pause order (seed 004): refuse new operations → drain the proxy (grace, then force-close) →
//! envd `/snapshot/prepare` (ports quiesced, idle connections closed, page cache dropped unless
//! the RAM is a shared file, sync) → balloon → freeze vCPUs → save device state → checksum
//! memory → commit → stop the VMM → release network and slot. Any failure after the freeze thaws
//! the VM: nothing is lost.
//!
//! Resume: fresh slot (the guest keeps its fixed address, so a snapshot restores into any
//! namespace) → new VMM from the snapshot, guest frozen, checksums verified meanwhile → thaw →
//! envd ready (its own timeout) → `/init` (its own timeout), which closes pre-snapshot
//! connections and restarts the port subsystem.

use super::{
    Arc, BTreeMap, Duration, EnvdClient, GuestMetadata, IpAddr, PathBuf, PausedSandbox, Sandbox,
    SandboxManager, SandboxRecord, SandboxStatus, init_request, lock, now_unix, read, write,
};
use crate::error::{AgentError, AgentResult, error_chain};
use crate::image::GuestImage;
use crate::layout::validate_sandbox_id;
use crate::network::{GUEST_MAC, NetworkOptions, TAP_NAME};
use crate::sandbox::record::{RecordState, write_json_atomic};
use crate::snapshot::{self as store, MemoryHeader};
use crate::vmm::{
    DiskFormat, MemorySnapshot, RestoreMemory, RestoreSource, SnapshotKind, SnapshotTarget,
    VmHandle, VmSpec, VmmKind,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The commit point of a sandbox's pause snapshot.
pub const SNAPSHOT_MANIFEST: &str = "snapshot.json";
/// The commit point of a template.
pub const TEMPLATE_MANIFEST: &str = "template.json";
const STATE_FILE: &str = "vmstate";
const MEMORY_HEADER: &str = "memory.header";
/// QEMU's guest RAM file, in the sandbox folder while running and in the snapshot afterwards.
pub const MEMORY_FILE: &str = "memory.raw";
/// Firecracker's raw memory output before it is turned into build files.
const RAW_MEMFILE: &str = "memfile.raw";
const PAGE_SERVER_SOCKET: &str = "uffd.sock";

/// How long in-flight proxied requests get to finish before a pause closes them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// envd's `/snapshot/prepare` (drops caches and syncs, which can take a moment).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);
/// envd after a restore: answering `/health`, then taking `/init`, each with its own budget.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a snapshot was taken of; enough to restore it without the original sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub vmm: VmmKind,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub disk_format: DiskFormat,
    /// The disk's file name in the snapshot's folder.
    pub disk_file: String,
    pub image_version: String,
    pub kernel_release: String,
    pub created_at_unix: i64,
    /// The sandbox it was taken from.
    pub source_sandbox: String,
    #[serde(default)]
    pub default_user: String,
    #[serde(default)]
    pub default_env: BTreeMap<String, String>,
}

/// Timings of one pause, for logs and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct PauseReport {
    pub drain: Duration,
    pub prepare: Duration,
    pub freeze_to_commit: Duration,
    pub total: Duration,
    /// Bytes the snapshot occupies on disk (memory, state, header; not the disk).
    pub snapshot_bytes: u64,
}

/// What a resume may change: the control plane's view of timeout and defaults.
#[derive(Debug, Clone, Default)]
pub struct ResumeOverrides {
    pub timeout_sec: Option<u32>,
    pub default_user: Option<String>,
    pub default_env: Option<BTreeMap<String, String>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::io(path, e)
}

fn remove_if_exists(path: &Path) -> AgentResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io(path, e)),
    }
}

fn read_manifest(path: &Path) -> AgentResult<SnapshotManifest> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::SnapshotDamaged(format!("{} is missing", path.display()))
        } else {
            AgentError::io(path, e)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::SnapshotDamaged(format!("{} is malformed: {e}", path.display())))
}

/// Bytes allocated on disk under `dir` (files only, one level).
fn allocated_in(dir: &Path, skip: &[&str]) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !skip.iter().any(|s| e.file_name() == *s))
                .map(|e| crate::disk::allocated_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

impl SandboxManager {
    pub(crate) fn template_dir(&self, template_id: &str) -> PathBuf {
        self.cfg.layout.templates().join(template_id)
    }

    // -----------------------------------------------------------------------------------------
    // Pause
    // -----------------------------------------------------------------------------------------

    /// Pauses a running sandbox into a snapshot in its folder and releases its VM, network and
    /// slot. A failure leaves it running.
    pub async fn pause(&self, id: &str) -> AgentResult<PauseReport> {
        let sb = self.get(id)?;
        let lifecycle = sb.lifecycle.clone();
        let _life = lifecycle.lock().await;
        // Re-check under the lock: a destroy or another pause may have won.
        let sb = self.get(id)?;
        *lock(&sb.status) = SandboxStatus::Pausing;
        let started = Instant::now();
        let mut report = PauseReport::default();
        let result = self.freeze_and_save(&sb, &sb.dir, &mut report).await;
        match result {
            Ok(()) => {}
            Err(e) => {
                *lock(&sb.status) = SandboxStatus::Running;
                tracing::warn!(sandbox = %id, error = %error_chain(&e), "pause failed; the sandbox keeps running");
                return Err(e);
            }
        }
        // Committed: from here on the sandbox is paused whatever else fails.
        sb.tasks.cancel();
        let mut record = sb.record();
        record.state = RecordState::Paused;
        if let Err(e) = record.save(&sb.dir) {
            tracing::error!(sandbox = %id, error = %e, "could not record the pause; the snapshot is complete and recovery will find it");
        }
        if let Err(e) = self.vmm.stop(&record.vm).await {
            tracing::error!(sandbox = %id, error = %e, "stopping the paused VM failed");
        }
        self.stop_page_server(id);
        if let Some(gate) = self.traffic_gate() {
            gate.evict(id);
        }
        write(&self.metadata_by_source).remove(&IpAddr::V4(sb.addresses.vpeer_ip));
        match self.network.destroy(record.slot).await {
            Ok(()) => self.slots.release(record.slot),
            Err(e) => {
                tracing::error!(sandbox = %id, slot = record.slot, error = %e, "removing the network of a paused sandbox failed; the slot stays reserved")
            }
        }
        report.snapshot_bytes = allocated_in(&sb.dir, &[record_disk_name(&record).as_str()]);
        let paused = Arc::new(PausedSandbox {
            record,
            dir: sb.dir.clone(),
            lifecycle: lifecycle.clone(),
        });
        write(&self.paused).insert(id.to_string(), paused);
        write(&self.boxes).remove(id);
        report.total = started.elapsed();
        tracing::info!(
            sandbox = %id,
            drain_ms = report.drain.as_millis() as u64,
            prepare_ms = report.prepare.as_millis() as u64,
            freeze_to_commit_ms = report.freeze_to_commit.as_millis() as u64,
            total_ms = report.total.as_millis() as u64,
            snapshot_mb = report.snapshot_bytes >> 20,
            "sandbox paused"
        );
        Ok(report)
    }

    /// Drains, prepares, freezes and writes a complete snapshot of `sb` into `dir`, committing
    /// it with its manifest. On failure the VM runs again and traffic flows again.
    async fn freeze_and_save(
        &self,
        sb: &Arc<Sandbox>,
        dir: &Path,
        report: &mut PauseReport,
    ) -> AgentResult<()> {
        let id = sb.id.as_str();
        let t = Instant::now();
        let gate = self.traffic_gate();
        if let Some(gate) = &gate {
            let closed = gate.drain(id, DRAIN_GRACE).await;
            if closed > 0 {
                tracing::info!(sandbox = %id, closed, "force-closed proxied traffic for the pause");
            }
        }
        report.drain = t.elapsed();
        let t = Instant::now();
        let drop_cache = self.drop_guest_page_cache();
        if let Err(e) = sb.envd.snapshot_prepare(PREPARE_TIMEOUT, drop_cache).await {
            // Best effort: the restore path closes stale connections either way.
            tracing::warn!(sandbox = %id, error = %e, "envd snapshot prepare failed; pausing anyway");
        }
        report.prepare = t.elapsed();
        let record = sb.record();
        let vm = record.vm.clone();
        let t = Instant::now();
        let ballooned = self.inflate_balloon(sb, &vm).await;
        let saved = async {
            self.vmm.pause_vcpus(&vm).await?;
            self.write_snapshot(&record, &vm, dir, dir, SNAPSHOT_MANIFEST)
                .await
        }
        .await;
        report.freeze_to_commit = t.elapsed();
        if let Err(e) = saved {
            self.thaw_after_failure(sb, &vm, ballooned).await;
            return Err(e);
        }
        Ok(())
    }

    /// Whether envd should drop the guest's page cache before a snapshot. With a shared RAM file
    /// (QEMU) the freed pages stay in the file, so dropping only makes the first commands after
    /// a resume reload their binaries from disk.
    fn drop_guest_page_cache(&self) -> bool {
        self.vmm.memory_snapshot() == MemorySnapshot::VmmWritten
    }

    /// Inflates the balloon to leave the guest what it uses plus headroom, so the snapshot holds
    /// less memory. Returns whether it did (so a failed pause deflates it again).
    async fn inflate_balloon(&self, sb: &Arc<Sandbox>, vm: &VmHandle) -> bool {
        if self.vmm.memory_snapshot() != MemorySnapshot::VmmWritten {
            return false;
        }
        let Ok(used_mib) = sb.envd.memory_used_mib().await else {
            return false;
        };
        let total = sb.record().memory_mb;
        let keep = (used_mib.saturating_mul(2)).max(256) + 128;
        if keep >= total {
            return false;
        }
        match self.vmm.set_balloon(vm, total - keep).await {
            Ok(true) => {
                // Give the guest a moment to hand the pages over.
                tokio::time::sleep(Duration::from_secs(2)).await;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(sandbox = %sb.id, error = %e, "balloon inflation failed; pausing with it deflated");
                false
            }
        }
    }

    /// Thaws a VM whose pause failed after the freeze and lets its traffic in again.
    async fn thaw_after_failure(&self, sb: &Arc<Sandbox>, vm: &VmHandle, ballooned: bool) {
        if let Err(e) = self.vmm.resume_vcpus(vm).await {
            tracing::error!(sandbox = %sb.id, error = %e, "could not thaw the VM after a failed pause");
        }
        if ballooned && let Err(e) = self.vmm.set_balloon(vm, 0).await {
            tracing::warn!(sandbox = %sb.id, error = %e, "could not deflate the balloon");
        }
        if let Some(gate) = self.traffic_gate() {
            gate.undrain(&sb.id);
        }
        // envd re-enables keep-alives and restarts its port subsystem on /init.
        if let Err(e) = sb.envd.init(&init_request(&sb.record())).await {
            tracing::warn!(sandbox = %sb.id, error = %e, "envd did not take /init after a failed pause");
        }
    }

    /// Saves a frozen VM into `out` (device state, memory, header, disk for templates) and
    /// commits it by writing `manifest_name` last. `run_dir` is the sandbox's own folder.
    async fn write_snapshot(
        &self,
        record: &SandboxRecord,
        vm: &VmHandle,
        run_dir: &Path,
        out: &Path,
        manifest_name: &str,
    ) -> AgentResult<()> {
        let manifest_path = out.join(manifest_name);
        // An older snapshot in the same place stops being valid the moment we start writing.
        remove_if_exists(&manifest_path)?;
        let state_tmp = out.join(format!("{STATE_FILE}.tmp"));
        let _ = std::fs::remove_file(&state_tmp);
        let into_template = run_dir != out;
        let header = match self.vmm.memory_snapshot() {
            MemorySnapshot::SharedFile => {
                self.vmm
                    .save_snapshot(
                        vm,
                        &SnapshotTarget {
                            state: state_tmp.clone(),
                            memory: None,
                            kind: SnapshotKind::Full,
                        },
                    )
                    .await?;
                let ram = out.join(MEMORY_FILE);
                if into_template {
                    copy_sparse(&run_dir.join(MEMORY_FILE), &ram).await?;
                }
                blocking(move || store::describe_raw(&ram, MEMORY_FILE).map_err(AgentError::from))
                    .await?
            }
            MemorySnapshot::VmmWritten => {
                let raw = out.join(RAW_MEMFILE);
                let parent = if into_template {
                    None
                } else {
                    MemoryHeader::read(&run_dir.join(MEMORY_HEADER)).ok()
                };
                let kind = if parent.is_some() {
                    SnapshotKind::Diff
                } else {
                    SnapshotKind::Full
                };
                self.vmm
                    .save_snapshot(
                        vm,
                        &SnapshotTarget {
                            state: state_tmp.clone(),
                            memory: Some(raw.clone()),
                            kind,
                        },
                    )
                    .await?;
                let out_dir = out.to_path_buf();
                blocking(move || {
                    store::store_vmm_memory(&raw, parent.as_ref(), &out_dir)
                        .map_err(AgentError::from)
                })
                .await?
            }
        };
        let header_path = out.join(MEMORY_HEADER);
        blocking(move || header.write(&header_path).map_err(AgentError::from)).await?;
        std::fs::rename(&state_tmp, out.join(STATE_FILE)).map_err(io(&state_tmp))?;
        let disk_file = record_disk_name(record);
        if into_template {
            copy_sparse(&record.disk, &out.join(&disk_file)).await?;
        }
        let manifest = SnapshotManifest {
            vmm: self.vmm.kind(),
            vcpus: record.vcpus,
            memory_mb: record.memory_mb,
            disk_size_mb: record.disk_size_mb,
            disk_format: record.disk_format,
            disk_file,
            image_version: record.image_version.clone(),
            kernel_release: record.kernel_release.clone(),
            created_at_unix: now_unix(),
            source_sandbox: record.sandbox_id.clone(),
            default_user: record.default_user.clone(),
            default_env: record.default_env.clone(),
        };
        write_json_atomic(&manifest_path, &manifest)
    }

    // -----------------------------------------------------------------------------------------
    // Resume and create from a template
    // -----------------------------------------------------------------------------------------

    /// Resumes a paused sandbox from its snapshot. A damaged snapshot is refused (it stays
    /// paused and can only be destroyed); any other failure before the guest runs leaves it
    /// paused.
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        overrides: ResumeOverrides,
    ) -> AgentResult<Arc<Sandbox>> {
        let found = read(&self.paused).get(id).cloned();
        let paused = match found {
            Some(p) => p,
            None => {
                return match read(&self.boxes).get(id) {
                    Some(sb) => Err(AgentError::NotRunning {
                        id: id.into(),
                        state: sb.status().as_str().into(),
                    }),
                    None => Err(AgentError::SandboxNotFound(id.into())),
                };
            }
        };
        let _life = paused.lifecycle.lock().await;
        if !read(&self.paused).contains_key(id) {
            return Err(AgentError::NotRunning {
                id: id.into(),
                state: "running".into(),
            });
        }
        let mut record = paused.record.clone();
        if let Some(t) = overrides.timeout_sec {
            record.timeout_sec = t;
        }
        if let Some(u) = overrides.default_user.filter(|u| !u.is_empty()) {
            record.default_user = u;
        }
        if let Some(env) = overrides.default_env.filter(|e| !e.is_empty()) {
            record.default_env.extend(env);
        }
        let dir = paused.dir.clone();
        let manifest = read_manifest(&dir.join(SNAPSHOT_MANIFEST))?;
        let sandbox = self
            .boot_from_snapshot(
                record,
                &dir,
                &dir,
                &manifest,
                paused.lifecycle.clone(),
                None,
            )
            .await?;
        write(&self.paused).remove(id);
        Ok(sandbox)
    }

    /// Creates a sandbox by restoring a template instead of booting.
    pub(super) async fn create_from_template(
        self: &Arc<Self>,
        req: super::CreateRequest,
    ) -> AgentResult<Arc<Sandbox>> {
        let started = Instant::now();
        let id = req.sandbox_id.clone();
        let tdir = self.template_dir(&req.template_id);
        let manifest = read_manifest(&tdir.join(TEMPLATE_MANIFEST))?;
        if manifest.vmm != self.vmm.kind() {
            return Err(AgentError::InvalidArgument(format!(
                "template {} was taken with {}, this host runs {}",
                req.template_id,
                manifest.vmm,
                self.vmm.kind()
            )));
        }
        let dir = self.cfg.layout.sandbox_dir(&id);
        if dir.exists() {
            return Err(AgentError::SandboxExists(id));
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let result = async {
            // The guest writes into its RAM file and disk, so both are the sandbox's own copies;
            // the template stays read-only and serves any number of sandboxes.
            // The disk (the guest's writes since the base image: usually small) is copied first;
            // the RAM file is created at its full size and filled while the network comes up,
            // and the VMM only loads the snapshot once it is complete.
            let disk = (
                tdir.join(&manifest.disk_file),
                dir.join(&manifest.disk_file),
            );
            blocking(move || {
                store::copy_sparse_with(&disk.0, &disk.1, store::Durability::Volatile)
                    .map_err(AgentError::from)
            })
            .await?;
            let (from, to) = (tdir.join(MEMORY_FILE), dir.join(MEMORY_FILE));
            let memory_copy =
                if manifest.vmm == VmmKind::Qemu && !Self::take_spare_memory(&tdir, &to) {
                    let len = std::fs::metadata(&from).map_err(io(&from))?.len();
                    std::fs::File::create(&to)
                        .and_then(|f| f.set_len(len))
                        .map_err(io(&to))?;
                    Some(tokio::task::spawn_blocking(move || {
                        store::copy_sparse_into_sized(&from, &to).map_err(AgentError::from)
                    }))
                } else {
                    None
                };
            let mut default_env = manifest.default_env.clone();
            default_env.extend(req.default_env.clone());
            let record = SandboxRecord {
                sandbox_id: id.clone(),
                vcpus: manifest.vcpus,
                memory_mb: manifest.memory_mb,
                disk_size_mb: manifest.disk_size_mb,
                timeout_sec: req.timeout_sec,
                team_id: req.team_id.clone(),
                template_id: req.template_id.clone(),
                template: req.template.clone(),
                default_user: if req.default_user.is_empty() {
                    manifest.default_user.clone()
                } else {
                    req.default_user.clone()
                },
                default_env,
                metadata: req.metadata.clone(),
                slot: 0,
                host_ip: String::new(),
                created_at_unix: now_unix(),
                image_version: manifest.image_version.clone(),
                kernel_release: manifest.kernel_release.clone(),
                disk: dir.join(&manifest.disk_file),
                disk_format: manifest.disk_format,
                vm: placeholder_vm(),
                state: RecordState::Paused,
            };
            self.boot_from_snapshot(
                record,
                &dir,
                &tdir,
                &manifest,
                Default::default(),
                memory_copy,
            )
            .await
        }
        .await;
        match result {
            Ok(sb) => {
                self.refill_spare_memory(&req.template_id);
                tracing::info!(sandbox = %id, template = %req.template_id, total_ms = started.elapsed().as_millis() as u64, "sandbox created from a template");
                Ok(sb)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Starts `record`'s VM from the snapshot in `snap_dir` with `run_dir` as its folder, thaws
    /// it, brings envd back and registers the sandbox as running. Before the guest runs, any
    /// failure leaves the snapshot untouched. `preparing` is work (copying the RAM file) that
    /// must finish before the VMM loads the snapshot, but may overlap the network setup.
    async fn boot_from_snapshot(
        self: &Arc<Self>,
        mut record: SandboxRecord,
        run_dir: &Path,
        snap_dir: &Path,
        manifest: &SnapshotManifest,
        lifecycle: Arc<tokio::sync::Mutex<()>>,
        preparing: Option<tokio::task::JoinHandle<AgentResult<()>>>,
    ) -> AgentResult<Arc<Sandbox>> {
        let id = record.sandbox_id.clone();
        let started = Instant::now();
        let header = {
            let path = snap_dir.join(MEMORY_HEADER);
            blocking(move || MemoryHeader::read(&path).map_err(AgentError::from)).await?
        };
        if !snap_dir.join(STATE_FILE).is_file() {
            return Err(AgentError::SnapshotDamaged(format!(
                "{} is missing",
                snap_dir.join(STATE_FILE).display()
            )));
        }
        // Checksums are verified while the VMM starts; the guest only runs if they pass.
        let verify = {
            let header = header.clone();
            let dir = snap_dir.to_path_buf();
            tokio::task::spawn_blocking(move || store::verify(&header, &dir))
        };
        let image = GuestImage::version(self.cfg.layout.images(), &manifest.image_version)
            .map_err(|e| {
                AgentError::Image(format!(
                    "the snapshot needs guest image {}, which is not on this host: {e}",
                    manifest.image_version
                ))
            })?;
        image.pin(&super::sandbox_pin(&id))?;

        let networking = Instant::now();
        let slot = self.slots.allocate()?;
        let net = match self
            .network
            .create(
                slot,
                &NetworkOptions {
                    metadata_port: self.cfg.metadata_port,
                },
            )
            .await
        {
            Ok(n) => n,
            Err(e) => {
                self.slots.release(slot);
                return Err(e);
            }
        };
        let addresses = net.addresses.clone();
        let network_ms = networking.elapsed().as_millis() as u64;
        let source_ip = IpAddr::V4(addresses.vpeer_ip);
        let metadata = GuestMetadata {
            instance_id: id.clone(),
            env_id: record.template_id.clone(),
            address: None,
        };
        write(&self.metadata_by_source).insert(source_ip, metadata.clone());
        let release_network = |mgr: Arc<SandboxManager>| async move {
            write(&mgr.metadata_by_source).remove(&source_ip);
            match mgr.network.destroy(slot).await {
                Ok(()) => mgr.slots.release(slot),
                Err(e) => tracing::error!(slot, error = %e, "removing a restore's network failed"),
            }
        };

        let spec = VmSpec {
            sandbox_id: id.clone(),
            vcpus: manifest.vcpus,
            memory_mib: manifest.memory_mb,
            kernel: image.kernel(),
            initrd: image.initrd(),
            boot_args: image.manifest.boot_args.clone(),
            disk: record.disk.clone(),
            disk_format: manifest.disk_format,
            netns: addresses.netns.clone(),
            tap: TAP_NAME.into(),
            guest_mac: GUEST_MAC.into(),
            tx_rate_limit: None,
            run_dir: run_dir.to_path_buf(),
            memory_path: run_dir.join(MEMORY_FILE),
            metadata,
        };
        let restore_source = RestoreSource {
            state: snap_dir.join(STATE_FILE),
            memory: match self.vmm.memory_snapshot() {
                MemorySnapshot::SharedFile => RestoreMemory::SharedFile,
                MemorySnapshot::VmmWritten => {
                    RestoreMemory::PageServer(run_dir.join(PAGE_SERVER_SOCKET))
                }
            },
        };
        let page_server = match &restore_source.memory {
            RestoreMemory::PageServer(socket) => {
                match self.start_page_server(&id, socket, &header, snap_dir) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        release_network(self.clone()).await;
                        return Err(e);
                    }
                }
            }
            RestoreMemory::SharedFile => None,
        };
        // The RAM file must be complete before the VMM loads device state: QEMU reads the
        // virtqueues' indices from guest memory while loading, and a half-copied file gives it
        // zeros (a dead network card). So the copy overlaps the network setup only.
        if let Some(task) = preparing {
            let copied = match task.await {
                Ok(r) => r,
                Err(e) => Err(AgentError::Internal(format!("copy task failed: {e}"))),
            };
            if let Err(e) = copied {
                drop(page_server);
                release_network(self.clone()).await;
                return Err(e);
            }
        }
        let restored_in = Instant::now();
        let vm = match self.vmm.restore(&spec, &restore_source).await {
            Ok(vm) => vm,
            Err(e) => {
                drop(page_server);
                release_network(self.clone()).await;
                return Err(e);
            }
        };
        let page_server = match page_server {
            Some(server) => match server.connected().await {
                Ok(server) => Some(server),
                Err(e) => {
                    let _ = self.vmm.stop(&vm).await;
                    release_network(self.clone()).await;
                    return Err(e);
                }
            },
            None => None,
        };
        let restore_ms = restored_in.elapsed().as_millis() as u64;
        let verifying = Instant::now();
        let verified = match verify.await {
            Ok(r) => r.map_err(AgentError::from),
            Err(e) => Err(AgentError::Internal(format!("checksum task failed: {e}"))),
        };
        let verify_wait_ms = verifying.elapsed().as_millis() as u64;
        if let Err(e) = verified {
            tracing::error!(sandbox = %id, error = %e, "refusing to resume: the snapshot is damaged or could not be prepared");
            let _ = self.vmm.stop(&vm).await;
            drop(page_server);
            release_network(self.clone()).await;
            return Err(e);
        }
        // The point of no return: the guest runs and changes its memory and disk. A pause
        // snapshot of a QEMU sandbox is consumed (its RAM file is used in place); Firecracker's
        // build files stay as the parent of the next diff.
        if run_dir == snap_dir {
            remove_if_exists(&run_dir.join(SNAPSHOT_MANIFEST))?;
        }
        if let Err(e) = self.vmm.resume_vcpus(&vm).await {
            let _ = self.vmm.stop(&vm).await;
            drop(page_server);
            release_network(self.clone()).await;
            return Err(AgentError::Vmm(format!(
                "the restored VM did not start running: {e}"
            )));
        }
        if let Some(server) = page_server {
            self.keep_page_server(&id, vm.pid, server);
        }
        record.slot = slot;
        record.host_ip = addresses.host_ip.to_string();
        record.vm = vm.clone();
        record.state = RecordState::Running;
        record.save(run_dir)?;
        let envd = EnvdClient::new(&id, IpAddr::V4(addresses.host_ip));
        let sandbox = self.register(
            record.clone(),
            addresses,
            envd.clone(),
            run_dir.to_path_buf(),
            lifecycle,
        );
        // Separate budgets (seed 000): a slow /health must not starve /init.
        let alive_vm = vm.clone();
        let readying = Instant::now();
        let ready = envd
            .wait_ready(RESTORE_READY_TIMEOUT, move || alive_vm.is_alive())
            .await;
        let ready_ms = readying.elapsed().as_millis() as u64;
        let initing = Instant::now();
        let init = match ready {
            Ok(_) => tokio::time::timeout(RESTORE_READY_TIMEOUT, envd.init(&init_request(&record)))
                .await
                .unwrap_or_else(|_| {
                    Err(AgentError::Timeout(format!(
                        "envd in sandbox {id} did not take /init within {RESTORE_READY_TIMEOUT:?}"
                    )))
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = init {
            let tail = super::serial_tail(&vm.serial_log, 20);
            tracing::error!(sandbox = %id, error = %e, serial = %tail, "restored guest's envd did not come back; destroying it");
            // Not `destroy`: a resume holds this sandbox's lifecycle lock already. The guest
            // ran, so its snapshot is spent; the sandbox is gone, paused entry included.
            sandbox.tasks.cancel();
            write(&self.boxes).remove(&id);
            write(&self.paused).remove(&id);
            if let Err(e) = self
                .teardown(&id, Some(&vm), Some(slot), run_dir, Some(source_ip))
                .await
            {
                tracing::error!(sandbox = %id, error = %e, "cleaning up a failed restore");
            }
            return Err(AgentError::Vmm(format!(
                "the restored guest did not answer: {}",
                error_chain(&e)
            )));
        }
        tracing::info!(
            sandbox = %id,
            slot,
            network_ms,
            restore_ms,
            verify_wait_ms,
            ready_ms,
            init_ms = initing.elapsed().as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "sandbox resumed from a snapshot"
        );
        Ok(sandbox)
    }

    // -----------------------------------------------------------------------------------------
    // Templates
    // -----------------------------------------------------------------------------------------

    /// Copies a sandbox's state into template `template_id`. A running sandbox is frozen for the
    /// copy and keeps running; a paused one stays paused. Returns the template's size on disk.
    pub async fn create_template(
        self: &Arc<Self>,
        sandbox_id: &str,
        template_id: &str,
    ) -> AgentResult<u64> {
        validate_sandbox_id(template_id)
            .map_err(|e| AgentError::InvalidArgument(format!("template id: {e}")))?;
        let tdir = self.template_dir(template_id);
        if tdir.exists() {
            return Err(AgentError::SandboxExists(format!("template {template_id}")));
        }
        let staging = self
            .cfg
            .layout
            .templates()
            .join(format!(".{template_id}.staging"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let result = self.fill_template(sandbox_id, &staging).await;
        let result = result.and_then(|()| {
            let manifest = read_manifest(&staging.join(TEMPLATE_MANIFEST))?;
            GuestImage::version(self.cfg.layout.images(), &manifest.image_version)?
                .pin(&template_pin(template_id))?;
            std::fs::rename(&staging, &tdir).map_err(io(&tdir))?;
            Ok(allocated_in(&tdir, &[]))
        });
        if result.is_ok() {
            // So that even the first sandbox made from it need not copy the RAM file.
            self.refill_spare_memory(template_id);
        }
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    async fn fill_template(&self, sandbox_id: &str, out: &Path) -> AgentResult<()> {
        let paused = read(&self.paused).get(sandbox_id).cloned();
        if let Some(paused) = paused {
            let _life = paused.lifecycle.lock().await;
            if read(&self.paused).contains_key(sandbox_id) {
                return copy_paused_snapshot(&paused, out).await;
            }
        }
        let sb = self.get(sandbox_id)?;
        let _life = sb.lifecycle.lock().await;
        let sb = self.get(sandbox_id)?;
        *lock(&sb.status) = SandboxStatus::Snapshotting;
        let result = async {
            if let Some(gate) = self.traffic_gate() {
                gate.drain(sandbox_id, DRAIN_GRACE).await;
            }
            let drop_cache = self.drop_guest_page_cache();
            if let Err(e) = sb.envd.snapshot_prepare(PREPARE_TIMEOUT, drop_cache).await {
                tracing::warn!(sandbox = %sandbox_id, error = %e, "envd snapshot prepare failed; snapshotting anyway");
            }
            let record = sb.record();
            self.vmm.pause_vcpus(&record.vm).await?;
            let saved = self
                .write_snapshot(&record, &record.vm, &sb.dir, out, TEMPLATE_MANIFEST)
                .await;
            if saved.is_ok() && self.vmm.memory_snapshot() == MemorySnapshot::VmmWritten {
                // Firecracker's dirty log restarts at every snapshot, so a diff against this
                // sandbox's own parent would miss what changed before the template was taken:
                // its next pause is a full one. (The page server keeps its files open.)
                if let Err(e) = remove_if_exists(&sb.dir.join(MEMORY_HEADER)) {
                    tracing::error!(sandbox = %sandbox_id, error = %e, "could not retire the diff parent; the next pause may miss pages");
                }
            }
            // The source runs on whatever happened.
            self.thaw_after_failure(&sb, &record.vm, false).await;
            saved
        }
        .await;
        *lock(&sb.status) = SandboxStatus::Running;
        result
    }

    /// Removes template `template_id` from this host. Its files are gone when this returns,
    /// unless a spare copy outlives the wait (then that copy removes them when it ends).
    pub async fn delete_template(self: &Arc<Self>, template_id: &str) -> AgentResult<()> {
        validate_sandbox_id(template_id)
            .map_err(|e| AgentError::InvalidArgument(format!("template id: {e}")))?;
        let Some(retired) = self.retire_template_dir(template_id)? else {
            return Err(AgentError::SandboxNotFound(format!(
                "template {template_id}"
            )));
        };
        crate::image::unpin(self.cfg.layout.images(), &template_pin(template_id));
        let mgr = self.clone();
        let id = template_id.to_string();
        let removed = tokio::task::spawn_blocking(move || {
            // A spare being copied writes into the retired folder until it ends.
            mgr.wait_for_spare_refill(&id, Duration::from_secs(30));
            match std::fs::remove_dir_all(&retired) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await;
        // The template is gone from its path; leftovers are swept at the next start.
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(template = %template_id, error = %e, "could not remove a deleted template's files")
            }
            Err(e) => {
                tracing::warn!(template = %template_id, error = %e, "the removal of a deleted template's files failed")
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Whole-host operations
    // -----------------------------------------------------------------------------------------

    /// Pauses every running sandbox (the agent stops, or lost the control plane). Two at a time:
    /// each pause is mostly waiting, and the host has little CPU to spare.
    pub async fn pause_all(&self) -> Vec<(String, AgentResult<PauseReport>)> {
        use futures::StreamExt;
        let ids: Vec<String> = self.list().iter().map(|sb| sb.id.clone()).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        tracing::warn!(sandboxes = ids.len(), "pausing every running sandbox");
        futures::stream::iter(ids)
            .map(|id| async move {
                let r = self.pause(&id).await;
                if let Err(e) = &r {
                    tracing::error!(sandbox = %id, error = %e, "could not pause; it keeps running");
                }
                (id, r)
            })
            .buffer_unordered(2)
            .collect()
            .await
    }

    /// Puts a paused sandbox found on disk back in the paused map.
    pub(super) fn adopt_paused(&self, mut record: SandboxRecord, dir: PathBuf) {
        record.state = RecordState::Paused;
        let id = record.sandbox_id.clone();
        write(&self.paused).insert(
            id,
            Arc::new(PausedSandbox {
                record,
                dir,
                lifecycle: Default::default(),
            }),
        );
    }

    /// Whether `dir` holds a committed pause snapshot.
    pub(super) fn has_snapshot(dir: &Path) -> bool {
        dir.join(SNAPSHOT_MANIFEST).is_file()
    }
}

/// A template from a paused sandbox: its snapshot files, copied.
async fn copy_paused_snapshot(paused: &PausedSandbox, out: &Path) -> AgentResult<()> {
    let src = &paused.dir;
    let mut manifest = read_manifest(&src.join(SNAPSHOT_MANIFEST))?;
    let header = MemoryHeader::read(&src.join(MEMORY_HEADER)).map_err(AgentError::from)?;
    let mut files: Vec<String> = header.build_files();
    files.push(MEMORY_HEADER.into());
    files.push(STATE_FILE.into());
    files.push(manifest.disk_file.clone());
    for f in files {
        copy_sparse(&src.join(&f), &out.join(&f)).await?;
    }
    manifest.created_at_unix = now_unix();
    write_json_atomic(&out.join(TEMPLATE_MANIFEST), &manifest)
}

/// The name of a template's pin on its guest image.
fn template_pin(template_id: &str) -> String {
    format!("template.{template_id}")
}

fn record_disk_name(record: &SandboxRecord) -> String {
    record
        .disk
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "rootfs".into())
}

/// A handle for a record whose VM does not exist yet.
fn placeholder_vm() -> VmHandle {
    VmHandle {
        kind: VmmKind::Qemu,
        pid: 0,
        start_time: 0,
        control_socket: PathBuf::new(),
        serial_log: PathBuf::new(),
    }
}

async fn copy_sparse(src: &Path, dst: &Path) -> AgentResult<()> {
    let (s, d) = (src.to_path_buf(), dst.to_path_buf());
    blocking(move || store::copy_sparse(&s, &d).map_err(AgentError::from)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> AgentResult<T> + Send + 'static,
) -> AgentResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Internal(format!("blocking task failed: {e}")))?
}
