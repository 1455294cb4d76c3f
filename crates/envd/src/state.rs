//! Process-wide state shared by every handler.

use crate::cgroups::CgroupManager;
use crate::conntrack::ConnTracker;
use crate::error::Result;
use crate::filesystem::watcher::WatcherRegistry;
use crate::metadata::MetadataSource;
use crate::port::PortSubsystem;
use crate::process::ProcessTable;
use crate::system_metrics::MetricsSampler;
use crate::user::Account;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// Defaults applied to every process and file operation, set by `/init`.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub env_vars: BTreeMap<String, String>,
    pub user: String,
    pub workdir: Option<PathBuf>,
}

/// Static settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `false` with `--isnotfc`: a plain process on a host (no metadata service, no cgroups).
    pub in_vm: bool,
    pub version: String,
    pub commit: String,
    /// Where markers like `.WRENN_SANDBOX` are written (`/run/wrenn` in a VM).
    pub run_dir: PathBuf,
}

pub struct EnvdState {
    pub settings: Settings,
    pub defaults: RwLock<Defaults>,
    access_token: RwLock<Option<Zeroizing<String>>>,
    /// Nanosecond timestamp of the last `/init` that changed data; older ones are stale.
    pub last_init_timestamp: std::sync::Mutex<Option<i128>>,
    /// Set by `/snapshot/prepare`; the first request after resume runs the restore path.
    pub needs_restore: AtomicBool,
    pub processes: Arc<ProcessTable>,
    pub watchers: WatcherRegistry,
    pub ports: PortSubsystem,
    pub conns: ConnTracker,
    pub metrics: MetricsSampler,
    /// Where started processes are placed (`NoCgroups` outside a VM).
    pub cgroups: Arc<dyn CgroupManager>,
    /// The VMM's metadata service; `None` outside a VM.
    pub metadata: Option<Arc<dyn MetadataSource>>,
    /// Set while a metadata poll runs, so repeated `/init`s don't start more.
    pub(crate) metadata_polling: AtomicBool,
}

pub type SharedState = Arc<EnvdState>;

impl EnvdState {
    pub fn new(
        settings: Settings,
        defaults: Defaults,
        ports: PortSubsystem,
        cgroups: Arc<dyn CgroupManager>,
        metadata: Option<Arc<dyn MetadataSource>>,
    ) -> Self {
        Self {
            settings,
            defaults: RwLock::new(defaults),
            access_token: RwLock::new(None),
            last_init_timestamp: std::sync::Mutex::new(None),
            needs_restore: AtomicBool::new(false),
            processes: Arc::new(ProcessTable::default()),
            watchers: WatcherRegistry::default(),
            ports,
            conns: ConnTracker::default(),
            metrics: MetricsSampler::new(),
            cgroups,
            metadata,
            metadata_polling: AtomicBool::new(false),
        }
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The account a request runs as: the one it names, else the default user.
    pub fn account(&self, requested: Option<&str>) -> Result<Account> {
        match requested.filter(|u| !u.is_empty()) {
            Some(name) => Account::lookup(name),
            None => Account::lookup(&self.defaults().user),
        }
    }

    pub fn set_access_token(&self, token: Option<String>) {
        *self.access_token.write().unwrap_or_else(|p| p.into_inner()) = token.map(Zeroizing::new);
    }

    pub fn access_token(&self) -> Option<Zeroizing<String>> {
        self.access_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Constant-time comparison against the configured token; `true` when none is set.
    pub fn token_matches(&self, given: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match self.access_token() {
            None => true,
            Some(expected) => {
                given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
            }
        }
    }

    pub fn has_access_token(&self) -> bool {
        self.access_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Runs the post-restore path once after a `/snapshot/prepare`: connections from before the
    /// snapshot are closed (their peers are gone), and the port forwarder starts again.
    pub async fn restore_if_needed(&self, current_conn: Option<crate::conntrack::ConnId>) {
        if self
            .needs_restore
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let closed = self.conns.restore(current_conn);
            self.ports.restart().await;
            tracing::info!(closed_connections = closed, "restored after snapshot");
        }
    }
}
