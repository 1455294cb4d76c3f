//! Pause, resume, snapshot create, restore and the balloon, through the driver's `Vmm` methods.

use super::*;
use std::os::unix::fs::MetadataExt;
use wrenn_agent::vmm::firecracker::DRIVE_PATH;
use wrenn_agent::vmm::{RestoreMemory, RestoreSource, SnapshotKind, SnapshotTarget, VmHandle};

/// A handle for a VM whose API is the fake at `socket` (the process is this test's own).
fn handle(socket: &Path) -> VmHandle {
    let pid = std::process::id();
    VmHandle {
        kind: VmmKind::Firecracker,
        pid,
        start_time: wrenn_agent::vmm::process::start_time(pid).expect("own start time"),
        control_socket: socket.into(),
        serial_log: PathBuf::from("/unused/firecracker.log"),
    }
}

const SNAPSHOT_DIR: &str = "/var/lib/wrenn/snapshots/sb-fixture";
const PAGE_SERVER: &str = "/var/lib/wrenn/sandboxes/sb-fixture/uffd.sock";

fn target(kind: SnapshotKind) -> SnapshotTarget {
    SnapshotTarget {
        state: Path::new(SNAPSHOT_DIR).join("snapfile"),
        memory: Some(Path::new(SNAPSHOT_DIR).join("memfile.raw")),
        kind,
    }
}

fn source() -> RestoreSource {
    RestoreSource {
        state: Path::new(SNAPSHOT_DIR).join("snapfile"),
        memory: RestoreMemory::PageServer(PAGE_SERVER.into()),
    }
}

/// What the pause path does: shrink the guest, freeze it, write a full snapshot (and a diff one,
/// as after a restore), then thaw and deflate it again.
#[tokio::test]
async fn snapshot_sequence_matches_the_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let fake = FakeApi::bind(&socket, Behaviour::default());
    let driver = Firecracker::new("/usr/local/bin/firecracker");
    let vm = handle(&socket);

    assert!(driver.set_balloon(&vm, 640).await.expect("inflate"));
    driver.pause_vcpus(&vm).await.expect("pause");
    for kind in [SnapshotKind::Full, SnapshotKind::Diff] {
        driver
            .save_snapshot(&vm, &target(kind))
            .await
            .expect("snapshot");
    }
    driver.resume_vcpus(&vm).await.expect("resume");
    assert!(driver.set_balloon(&vm, 0).await.expect("deflate"));
    check_fixture("snapshot_sequence.json", &fake.calls());
}

#[tokio::test]
async fn a_snapshot_without_a_memory_path_is_refused_before_any_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let fake = FakeApi::bind(&socket, Behaviour::default());
    let mut t = target(SnapshotKind::Full);
    t.memory = None;
    let err = Firecracker::new("/x")
        .save_snapshot(&handle(&socket), &t)
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("memory file"), "{err}");
    assert_eq!(fake.calls(), []);
}

#[tokio::test]
async fn a_failed_snapshot_names_the_call_and_the_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let _fake = FakeApi::bind(
        &socket,
        Behaviour {
            fail: Some("/snapshot/create"),
            ..Default::default()
        },
    );
    let err = Firecracker::new("/x")
        .save_snapshot(&handle(&socket), &target(SnapshotKind::Diff))
        .await
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains("PUT /snapshot/create"), "{msg}");
    assert!(msg.contains("fake refuses /snapshot/create"), "{msg}");
}

/// Writing a few GiB of memory takes far longer than a configuration call may.
#[tokio::test]
async fn snapshot_creation_outlasts_the_configuration_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let _fake = FakeApi::bind(
        &socket,
        Behaviour {
            hang: Some("/snapshot/create"),
            ..Default::default()
        },
    );
    let driver = Firecracker::new("/x").with_api_timeout(Duration::from_millis(100));
    let vm = handle(&socket);
    let waited = tokio::time::timeout(
        Duration::from_secs(1),
        driver.save_snapshot(&vm, &target(SnapshotKind::Full)),
    )
    .await;
    assert!(waited.is_err(), "gave up early: {waited:?}");
}

#[tokio::test]
async fn restore_loads_the_snapshot_and_leaves_the_guest_paused() {
    let rig = Rig::new(FAKE_FIRECRACKER);
    let spec = spec(&rig.run_dir());
    let server = tokio::spawn(Rig::serve_when_spawned(
        rig.bin("fc.args"),
        Behaviour::default(),
    ));
    let vm = rig.driver.restore(&spec, &source()).await.expect("restore");
    let (fake, pid, _) = server.await.expect("fake server");

    // Load with the page server and dirty-page tracking, no resume, then the identity.
    check_fixture("restore_sequence.json", &fake.calls());
    assert!(
        !fake.calls().iter().any(|c| c.path == "/vm"),
        "restore must not resume the guest"
    );
    assert_eq!(vm.pid, pid);
    assert!(vm.is_alive());

    // The snapshot's relative drive path resolves to this sandbox's disk.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, rig.run_dir().canonicalize().expect("run dir"));
    assert_eq!(
        std::fs::read_link(rig.run_dir().join(DRIVE_PATH)).expect("drive link"),
        spec.disk
    );

    // The manager thaws it once its own checks pass.
    rig.driver.resume_vcpus(&vm).await.expect("resume");
    assert_eq!(
        fake.calls().last(),
        Some(&Call {
            method: "PATCH".into(),
            path: "/vm".into(),
            body: json!({"state": "Resumed"}),
        })
    );
    rig.driver.stop(&vm).await.expect("stop");
    assert!(!vm.is_alive());
}

#[tokio::test]
async fn a_refused_snapshot_load_kills_firecracker_and_names_the_fault() {
    let rig = Rig::new(FAKE_FIRECRACKER);
    let behaviour = Behaviour {
        fail: Some("/snapshot/load"),
        ..Default::default()
    };
    let server = tokio::spawn(Rig::serve_when_spawned(rig.bin("fc.args"), behaviour));
    let err = rig
        .driver
        .restore(&spec(&rig.run_dir()), &source())
        .await
        .expect_err("must fail");
    let (fake, pid, _) = server.await.expect("fake server");
    let msg = err.to_string();
    assert!(matches!(err, AgentError::Vmm(_)), "{err:?}");
    assert!(msg.contains("PUT /snapshot/load"), "{msg}");
    assert!(msg.contains("fake refuses /snapshot/load"), "{msg}");
    assert!(!process_exists(pid), "firecracker is killed");
    assert!(!rig.run_dir().join("firecracker.sock").exists());
    let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, ["/snapshot/load"], "nothing after the failure");
}

#[tokio::test]
async fn a_shared_file_restore_is_refused_before_anything_runs() {
    let rig = Rig::new(FAKE_FIRECRACKER);
    let from = RestoreSource {
        memory: RestoreMemory::SharedFile,
        ..source()
    };
    let err = rig
        .driver
        .restore(&spec(&rig.run_dir()), &from)
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("page server"), "{err}");
    assert!(!rig.bin("fc.args").exists(), "firecracker never ran");
}

/// Under the jailer, Firecracker sees only its chroot: the restore's state file and page server
/// socket are staged there, and a snapshot written there ends up at the caller's paths.
#[tokio::test]
async fn jailed_restore_and_snapshot_go_through_the_chroot() {
    let rig = Rig::jailed();
    let files = rig.dir.path().join("sandbox");
    std::fs::create_dir_all(&files).expect("mkdir");
    let mut spec = spec(&rig.run_dir());
    spec.kernel = files.join("vmlinux");
    spec.disk = files.join("rootfs.ext4");
    std::fs::write(&spec.kernel, b"kernel").expect("kernel");
    std::fs::write(&spec.disk, b"disk").expect("disk");
    std::fs::create_dir_all(&spec.run_dir).expect("run dir");
    let page_server = spec.run_dir.join("uffd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&page_server).expect("page server");
    let state = files.join("snapfile");
    std::fs::write(&state, b"vmstate").expect("state");
    let jail = rig.dir.path().join("jail/firecracker/sb-fixture");
    let chroot = jail.join("root");

    let server = tokio::spawn(Rig::serve_when_spawned(
        rig.bin("fc.args"),
        Behaviour {
            snapshot_root: Some(chroot.clone()),
            ..Default::default()
        },
    ));
    let from = RestoreSource {
        state,
        memory: RestoreMemory::PageServer(page_server.clone()),
    };
    let vm = rig.driver.restore(&spec, &from).await.expect("restore");
    let (fake, _, _) = server.await.expect("fake server");
    assert_eq!(vm.control_socket, chroot.join("firecracker.sock"));
    let inode = |p: &Path| std::fs::metadata(p).expect("metadata").ino();
    assert_eq!(inode(&chroot.join(DRIVE_PATH)), inode(&spec.disk));
    assert_eq!(inode(&chroot.join("uffd.sock")), inode(&page_server));
    assert!(
        !chroot.join("restore.snap").exists(),
        "the state copy goes once loaded"
    );

    let out = rig.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let target = SnapshotTarget {
        state: out.join("snapfile.tmp"),
        memory: Some(out.join("memfile.raw")),
        kind: SnapshotKind::Diff,
    };
    rig.driver
        .save_snapshot(&vm, &target)
        .await
        .expect("snapshot");
    assert_eq!(std::fs::read(&target.state).expect("state"), b"vmstate");
    let memory = target.memory.as_ref().expect("memory");
    assert_eq!(std::fs::read(memory).expect("memory"), b"pages");
    assert!(!chroot.join("save.snap").exists() && !chroot.join("save.mem").exists());
    check_fixture("jailed_sequence.json", &fake.calls());

    rig.driver.stop(&vm).await.expect("stop");
    assert!(!jail.exists(), "stop removes the jail");
    assert!(spec.disk.exists(), "but never the disk");
}
