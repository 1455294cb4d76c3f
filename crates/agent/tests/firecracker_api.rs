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

// Named so that `cargo test -p wrenn-agent firecracker` selects these tests too.
mod firecracker {
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode, header};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};
    use std::convert::Infallible;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use wrenn_agent::AgentError;
    use wrenn_agent::vmm::firecracker::api::{
        ActionType, BalloonUpdate, MachineConfiguration, MemoryBackend, MemoryBackendType,
        NetworkInterface, NetworkOverride, RateLimiter, SnapshotCreateParams, SnapshotLoadParams,
        SnapshotType, TokenBucket, VmState,
    };
    use wrenn_agent::vmm::firecracker::{Firecracker, FirecrackerClient, LOG_FILE};
    use wrenn_agent::vmm::{DiskFormat, GuestMetadata, VmSpec, Vmm, VmmKind};

    /// One request as the fake saw it; also the fixture format.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Call {
        method: String,
        path: String,
        #[serde(skip_serializing_if = "Value::is_null", default)]
        body: Value,
    }

    /// How the fake answers: 204 to everything, except the configured paths.
    #[derive(Debug, Clone, Default)]
    struct Behaviour {
        /// Answered with 400 and a `fault_message`.
        fail: Option<&'static str>,
        /// Never answered.
        hang: Option<&'static str>,
    }

    /// A fake Firecracker API on a Unix socket.
    struct FakeApi {
        calls: Arc<Mutex<Vec<Call>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeApi {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeApi {
        fn bind(socket: &Path, behaviour: Behaviour) -> Self {
            let listener = tokio::net::UnixListener::bind(socket).expect("bind fake API");
            let calls = Arc::new(Mutex::new(Vec::new()));
            let recorded = calls.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let calls = recorded.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            answer(req, calls.clone(), behaviour.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Self { calls, task }
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("lock").clone()
        }
    }

    async fn answer(
        req: Request<Incoming>,
        calls: Arc<Mutex<Vec<Call>>>,
        behaviour: Behaviour,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let json_content = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
        };
        let has_body = !body.is_null();
        calls.lock().expect("lock").push(Call {
            method: method.to_string(),
            path: path.clone(),
            body,
        });
        let reply = |status: StatusCode, body: Value| {
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() = status;
            Ok(response)
        };
        if has_body && !json_content {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"fault_message": "body without application/json"}),
            );
        }
        if behaviour.hang == Some(path.as_str()) {
            std::future::pending::<()>().await;
        }
        if behaviour.fail == Some(path.as_str()) {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"fault_message": format!("fake refuses {path}")}),
            );
        }
        match (method, path.as_str()) {
            (Method::GET, "/") => reply(
                StatusCode::OK,
                json!({"app_name": "Firecracker", "id": "sb-fixture", "state": "Running", "vmm_version": "1.7.0"}),
            ),
            (Method::GET, "/version") => {
                reply(StatusCode::OK, json!({"firecracker_version": "1.7.0"}))
            }
            _ => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
        }
    }

    /// Compares `calls` with a checked-in fixture, or rewrites it under `UPDATE_FIXTURES=1`.
    fn check_fixture(name: &str, calls: &[Call]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/firecracker")
            .join(name);
        let actual = serde_json::to_string_pretty(calls).expect("json") + "\n";
        if std::env::var_os("UPDATE_FIXTURES").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir fixtures");
            std::fs::write(&path, &actual).expect("write fixture");
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; create it with UPDATE_FIXTURES=1", path.display())
        });
        if expected != actual {
            let mut diff = String::new();
            let (old, new): (Vec<_>, Vec<_>) =
                (expected.lines().collect(), actual.lines().collect());
            for i in 0..old.len().max(new.len()) {
                let (o, n) = (old.get(i), new.get(i));
                if o != n {
                    if let Some(o) = o {
                        diff.push_str(&format!("{:4} - {o}\n", i + 1));
                    }
                    if let Some(n) = n {
                        diff.push_str(&format!("{:4} + {n}\n", i + 1));
                    }
                }
            }
            panic!(
                "requests differ from {} (- fixture, + sent); if intended, re-bless with \
                 UPDATE_FIXTURES=1:\n{diff}",
                path.display()
            );
        }
    }

    fn spec(run_dir: &Path) -> VmSpec {
        VmSpec {
            sandbox_id: "sb-fixture".into(),
            vcpus: 2,
            memory_mib: 1024,
            kernel: "/var/lib/wrenn/images/v1/vmlinux".into(),
            initrd: None,
            boot_args: "console=ttyS0 root=/dev/vda rw init=/usr/local/bin/wrenn-init".into(),
            disk: "/var/lib/wrenn/sandboxes/sb-fixture/rootfs.ext4".into(),
            disk_format: DiskFormat::Raw,
            netns: "wrenn-ns-7".into(),
            tap: wrenn_agent::network::TAP_NAME.into(),
            guest_mac: wrenn_agent::network::GUEST_MAC.into(),
            // Upstream's egress limit: 200 MB/s with a 100 MB initial burst.
            tx_rate_limit: Some(wrenn_agent::vmm::TokenBucket {
                size: 209_715_200,
                one_time_burst: Some(104_857_600),
                refill_time_ms: 1000,
            }),
            run_dir: run_dir.into(),
            metadata: GuestMetadata {
                instance_id: "sb-fixture".into(),
                env_id: "tmpl-base".into(),
                address: None,
            },
        }
    }

    /// Writes an executable script. The write happens in a child shell so that no writable fd of
    /// the script ever exists in this (multi-threaded, forking) process, which would make
    /// exec fail with ETXTBSY in a concurrently spawned child.
    fn write_script(path: &Path, content: &str) {
        let status = std::process::Command::new("sh")
            .args(["-c", r#"printf '%s' "$1" > "$2" && chmod 755 "$2""#, "sh"])
            .arg(content)
            .arg(path)
            .status()
            .expect("sh");
        assert!(status.success(), "cannot write {}", path.display());
    }

    /// `ip netns exec <ns> <cmd...>` that records its arguments and execs `<cmd...>`.
    const FAKE_IP: &str = r#"#!/bin/sh
dir=$(dirname "$0")
printf '%s\n' "$@" > "$dir/ip.args.tmp" && mv "$dir/ip.args.tmp" "$dir/ip.args"
[ "$1" = netns ] && [ "$2" = exec ] || { echo "fake ip: unexpected $*" >&2; exit 2; }
shift 3
exec "$@"
"#;

    /// A Firecracker that records its pid and arguments, logs a line and waits to be killed.
    const FAKE_FIRECRACKER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "fake firecracker starting"
printf '%s\n' "$$" "$@" > "$dir/fc.args.tmp" && mv "$dir/fc.args.tmp" "$dir/fc.args"
exec sleep 600
"#;

    /// A Firecracker that fails at once, as a real one does without /dev/kvm.
    const FAILING_FIRECRACKER: &str = r#"#!/bin/sh
echo "Error creating the Kvm object: No such file or directory" >&2
exit 1
"#;

    struct Rig {
        dir: tempfile::TempDir,
        driver: Firecracker,
    }

    impl Rig {
        fn new(firecracker: &str) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).expect("mkdir");
            write_script(&bin.join("ip"), FAKE_IP);
            write_script(&bin.join("firecracker"), firecracker);
            let driver = Firecracker::new(bin.join("firecracker"))
                .with_ip_command(bin.join("ip"))
                .with_api_timeout(Duration::from_secs(2));
            Self { dir, driver }
        }

        fn run_dir(&self) -> PathBuf {
            self.dir.path().join("run")
        }

        fn bin(&self, name: &str) -> PathBuf {
            self.dir.path().join("bin").join(name)
        }

        /// Waits for the fake Firecracker to record itself, then binds the fake API at the
        /// socket it was told to open. Returns the fake and the recorded pid and arguments.
        async fn serve_when_spawned(
            args_file: PathBuf,
            behaviour: Behaviour,
        ) -> (FakeApi, u32, Vec<String>) {
            let deadline = Instant::now() + Duration::from_secs(5);
            let text = loop {
                if let Ok(text) = std::fs::read_to_string(&args_file) {
                    break text;
                }
                assert!(Instant::now() < deadline, "fake firecracker never ran");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let mut lines = text.lines().map(String::from);
            let pid = lines.next().expect("pid").parse().expect("pid number");
            let args: Vec<String> = lines.collect();
            let socket = args
                .iter()
                .position(|a| a == "--api-sock")
                .map(|i| PathBuf::from(&args[i + 1]))
                .expect("--api-sock");
            (FakeApi::bind(&socket, behaviour), pid, args)
        }
    }

    fn process_exists(pid: u32) -> bool {
        wrenn_agent::vmm::process::start_time(pid).is_some()
    }

    #[tokio::test]
    async fn boot_sequence_matches_the_fixture() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let fake = FakeApi::bind(&socket, Behaviour::default());
        let driver = Firecracker::new("/usr/local/bin/firecracker");
        let config = driver.boot_config(&spec(dir.path()));
        config
            .apply(&FirecrackerClient::new(&socket))
            .await
            .expect("boot");
        check_fixture("boot_sequence.json", &fake.calls());
    }

    #[tokio::test]
    async fn start_runs_firecracker_in_the_namespace_boots_it_and_stop_ends_it() {
        let rig = Rig::new(FAKE_FIRECRACKER);
        let spec = spec(&rig.run_dir());
        let server = tokio::spawn(Rig::serve_when_spawned(
            rig.bin("fc.args"),
            Behaviour::default(),
        ));
        let vm = rig.driver.start(&spec).await.expect("start");
        let (fake, pid, args) = server.await.expect("fake server");

        // The exact same requests as the pure boot sequence.
        check_fixture("boot_sequence.json", &fake.calls());

        let socket = rig.run_dir().join("firecracker.sock");
        assert_eq!(
            args,
            [
                "--api-sock",
                socket.to_str().expect("utf-8"),
                "--id",
                "sb-fixture"
            ]
        );
        let ip_args = std::fs::read_to_string(rig.bin("ip.args")).expect("ip args");
        let ip_args: Vec<&str> = ip_args.lines().collect();
        assert_eq!(ip_args[..3], ["netns", "exec", "wrenn-ns-7"]);
        assert_eq!(ip_args[3], rig.bin("firecracker").to_str().expect("utf-8"));

        assert_eq!(vm.kind, VmmKind::Firecracker);
        assert_eq!(
            vm.pid, pid,
            "the handle names the exec'd process, not a wrapper"
        );
        assert!(vm.is_alive());
        assert_eq!(vm.control_socket, socket);
        assert_eq!(vm.serial_log, rig.run_dir().join(LOG_FILE));
        let log = std::fs::read_to_string(&vm.serial_log).expect("log");
        assert!(log.contains("fake firecracker starting"), "{log}");

        // A session of its own, so the agent's process group can be signalled without it.
        let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).expect("sid");
        assert_eq!(sid.as_raw(), pid as i32);

        let new_identity = GuestMetadata {
            instance_id: "sb-fixture".into(),
            env_id: "tmpl-other".into(),
            address: Some("10.11.0.7".into()),
        };
        rig.driver
            .set_metadata(&vm, &new_identity)
            .await
            .expect("set metadata");
        assert_eq!(
            fake.calls().last(),
            Some(&Call {
                method: "PUT".into(),
                path: "/mmds".into(),
                body: json!({"instanceID": "sb-fixture", "envID": "tmpl-other", "address": "10.11.0.7"}),
            })
        );

        let started = Instant::now();
        rig.driver.stop(&vm).await.expect("stop");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM is enough"
        );
        assert!(!vm.is_alive());
        assert!(!socket.exists(), "stop removes the API socket");
        rig.driver.stop(&vm).await.expect("stopping twice is fine");
    }

    #[tokio::test]
    async fn start_reports_an_early_exit_with_firecrackers_own_words() {
        let rig = Rig::new(FAILING_FIRECRACKER);
        let started = Instant::now();
        let err = rig
            .driver
            .start(&spec(&rig.run_dir()))
            .await
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, AgentError::Vmm(_)), "{err:?}");
        assert!(msg.contains("exited"), "{msg}");
        assert!(msg.contains("Error creating the Kvm object"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no waiting for the socket"
        );
    }

    #[tokio::test]
    async fn failed_boot_kills_firecracker_and_removes_the_socket() {
        let rig = Rig::new(FAKE_FIRECRACKER);
        let behaviour = Behaviour {
            fail: Some("/machine-config"),
            ..Default::default()
        };
        let server = tokio::spawn(Rig::serve_when_spawned(rig.bin("fc.args"), behaviour));
        let err = rig
            .driver
            .start(&spec(&rig.run_dir()))
            .await
            .expect_err("must fail");
        let (fake, pid, _) = server.await.expect("fake server");
        let msg = err.to_string();
        assert!(msg.contains("PUT /machine-config"), "{msg}");
        assert!(msg.contains("fake refuses /machine-config"), "{msg}");
        assert!(!process_exists(pid), "firecracker is killed");
        assert!(!rig.run_dir().join("firecracker.sock").exists());
        let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths.last().map(String::as_str),
            Some("/machine-config"),
            "nothing after the failure: {paths:?}"
        );
    }

    #[tokio::test]
    async fn a_qcow2_disk_is_refused_before_anything_runs() {
        let rig = Rig::new(FAKE_FIRECRACKER);
        let mut spec = spec(&rig.run_dir());
        spec.disk_format = DiskFormat::Qcow2;
        let err = rig.driver.start(&spec).await.expect_err("must fail");
        assert!(err.to_string().contains("raw"), "{err}");
        assert!(!rig.bin("fc.args").exists(), "firecracker never ran");
        assert_eq!(rig.driver.disk_format(), DiskFormat::Raw);
    }

    #[tokio::test]
    async fn a_balloon_failure_does_not_stop_the_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let fake = FakeApi::bind(
            &socket,
            Behaviour {
                fail: Some("/balloon"),
                ..Default::default()
            },
        );
        let config = Firecracker::new("/x").boot_config(&spec(dir.path()));
        config
            .apply(&FirecrackerClient::new(&socket))
            .await
            .expect("boot despite the balloon");
        let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths[paths.len() - 3..],
            ["/mmds/config", "/actions", "/mmds"]
        );
    }

    #[tokio::test]
    async fn fault_message_is_surfaced_with_method_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let _fake = FakeApi::bind(
            &socket,
            Behaviour {
                fail: Some("/machine-config"),
                ..Default::default()
            },
        );
        let err = FirecrackerClient::new(&socket)
            .put_machine_config(&MachineConfiguration {
                vcpu_count: 3,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: None,
            })
            .await
            .expect_err("must fail");
        let AgentError::Vmm(msg) = &err else {
            panic!("expected a VMM error, got {err:?}");
        };
        assert!(msg.contains("PUT /machine-config"), "{msg}");
        assert!(msg.contains("400"), "{msg}");
        assert!(msg.contains("fake refuses /machine-config"), "{msg}");
    }

    #[tokio::test]
    async fn a_silent_api_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let fake = FakeApi::bind(
            &socket,
            Behaviour {
                hang: Some("/vm"),
                ..Default::default()
            },
        );
        let client = FirecrackerClient::new(&socket).with_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = client
            .patch_vm_state(VmState::Paused)
            .await
            .expect_err("must time out");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, AgentError::Timeout(_)), "{err:?}");
        assert!(err.to_string().contains("PATCH /vm"), "{err}");
        assert_eq!(fake.calls().len(), 1, "the request did arrive");
        // The client stays usable for the next call.
        client
            .put_action(ActionType::FlushMetrics)
            .await
            .expect("next call");
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nobody.sock");
        let err = FirecrackerClient::new(&socket)
            .get_version()
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains("nobody.sock"), "{err}");
    }

    #[tokio::test]
    async fn instance_info_and_version_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let fake = FakeApi::bind(&socket, Behaviour::default());
        let client = FirecrackerClient::new(&socket);
        let info = client.get_instance_info().await.expect("info");
        assert_eq!(info.state, "Running");
        assert_eq!(info.vmm_version, "1.7.0");
        let version = client.get_version().await.expect("version");
        assert_eq!(version.firecracker_version, "1.7.0");
        assert_eq!(
            fake.calls(),
            [
                Call {
                    method: "GET".into(),
                    path: "/".into(),
                    body: Value::Null
                },
                Call {
                    method: "GET".into(),
                    path: "/version".into(),
                    body: Value::Null
                },
            ]
        );
    }

    /// Pause, snapshot, restore and resume, as the pause/resume paths will call them.
    #[tokio::test]
    async fn snapshot_calls_match_the_fixture() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let fake = FakeApi::bind(&socket, Behaviour::default());
        let client = FirecrackerClient::new(&socket);
        let snap = Path::new("/var/lib/wrenn/snapshots/sb-fixture");

        // Pause: shrink the guest, freeze it, write a full snapshot, then a diff one.
        client
            .patch_balloon(&BalloonUpdate { amount_mib: 640 })
            .await
            .expect("inflate");
        client.patch_vm_state(VmState::Paused).await.expect("pause");
        for snapshot_type in [SnapshotType::Full, SnapshotType::Diff] {
            client
                .put_snapshot_create(&SnapshotCreateParams {
                    snapshot_type: Some(snapshot_type),
                    snapshot_path: snap.join("snapfile"),
                    mem_file_path: snap.join("memfile.raw"),
                })
                .await
                .expect("snapshot");
        }
        // Resume: memory served by the page-fault handler, then a file-backed load.
        client
            .put_snapshot_load(&SnapshotLoadParams {
                snapshot_path: snap.join("snapfile"),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::Uffd,
                    backend_path: "/var/lib/wrenn/sandboxes/sb-fixture/uffd.sock".into(),
                },
                enable_diff_snapshots: Some(true),
                track_dirty_pages: None,
                resume_vm: Some(false),
                network_overrides: vec![],
            })
            .await
            .expect("load uffd");
        client
            .put_snapshot_load(&SnapshotLoadParams {
                snapshot_path: snap.join("snapfile"),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: snap.join("memfile"),
                },
                enable_diff_snapshots: None,
                track_dirty_pages: Some(true),
                resume_vm: Some(true),
                network_overrides: vec![NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap1".into(),
                }],
            })
            .await
            .expect("load file");
        client
            .patch_vm_state(VmState::Resumed)
            .await
            .expect("resume");
        client
            .put_mmds(&GuestMetadata {
                instance_id: "sb-fixture".into(),
                env_id: "tmpl-base".into(),
                address: None,
            })
            .await
            .expect("mmds");
        client
            .patch_balloon(&BalloonUpdate { amount_mib: 0 })
            .await
            .expect("deflate");
        check_fixture("snapshot_sequence.json", &fake.calls());
    }

    #[test]
    fn rate_limiters_serialize_with_firecrackers_names() {
        let iface = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            rx_rate_limiter: Some(RateLimiter {
                bandwidth: Some(TokenBucket {
                    size: 1000,
                    one_time_burst: None,
                    refill_time: 100,
                }),
                ops: Some(TokenBucket {
                    size: 10,
                    one_time_burst: Some(5),
                    refill_time: 1000,
                }),
            }),
            tx_rate_limiter: Some(RateLimiter::default()),
        };
        assert_eq!(
            serde_json::to_value(&iface).expect("json"),
            json!({
                "iface_id": "eth0",
                "host_dev_name": "tap0",
                "rx_rate_limiter": {
                    "bandwidth": {"size": 1000, "refill_time": 100},
                    "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}
                },
                "tx_rate_limiter": {}
            })
        );
    }

    #[test]
    fn describe_names_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("firecracker");
        write_script(
            &bin,
            "#!/bin/sh\necho 'Firecracker v1.7.0'\necho\necho 'Supported snapshot data format versions: 1.0.0'\n",
        );
        let driver = Firecracker::detect(Some(bin)).expect("detected");
        assert_eq!(driver.describe(), "firecracker 1.7.0 (kvm)");
        assert_eq!(driver.kind(), VmmKind::Firecracker);
    }
}
