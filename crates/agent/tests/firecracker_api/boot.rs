//! Booting, stopping, and the API client's error handling.

use super::*;

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
