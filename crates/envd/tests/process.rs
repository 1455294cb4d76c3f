//! The `process.Process` service against a real envd.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use wrenn_protocol::connect::Code;
use wrenn_protocol::envd::process::*;
use wrenn_protocol::envd::rpc_path;

#[tokio::test]
async fn exec_reports_output_and_exit_code_in_both_codecs() {
    let envd = Envd::start().await;
    for client in [envd.client(), envd.json_client()] {
        let c = run(&client, sh("echo out; echo err >&2; exit 42")).await;
        assert!(c.pid > 0);
        assert_eq!(c.stdout, b"out\n");
        assert_eq!(c.stderr, b"err\n");
        let end = c.end.unwrap();
        assert_eq!(end.exit_code, 42);
        assert!(end.exited);
        assert_eq!(end.status, "exit status 42");
        let ok = run(&client, cmd("true", &[])).await;
        assert_eq!(ok.end.unwrap().status, "exit status 0");
    }
}

#[tokio::test]
async fn envs_cwd_and_user_are_honoured() {
    let envd = Envd::start().await;
    let client = envd.client();
    let dir = tempfile::tempdir().unwrap();
    let mut config = sh("echo \"$FOO\"; pwd; echo \"$HOME\"");
    config.envs.insert("FOO".into(), "bar baz".into());
    config.cwd = Some(dir.path().display().to_string());
    let c = run(&client, config).await;
    let out = String::from_utf8(c.stdout).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[0], "bar baz");
    assert_eq!(
        lines[1],
        std::fs::canonicalize(dir.path()).unwrap().to_str().unwrap()
    );

    if is_root() {
        let as_nobody = client.clone().with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic bm9ib2R5Og=="), // "nobody:"
        );
        let c = run(&as_nobody, cmd("id", &["-un"])).await;
        assert_eq!(String::from_utf8(c.stdout).unwrap().trim(), "nobody");
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let envd = Envd::start().await;
    let client = envd.client();

    let err = start(&client, start_req(cmd("/no/such/binary", &[]))).await;
    let err = match err {
        Ok(s) => collect(s, |m: StartResponse| m.event).await.err(),
        Err(e) => Some(e),
    };
    let err = err.expect("starting a missing binary fails");
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(err.message.contains("not found"), "{err}");

    let mut bad_cwd = cmd("true", &[]);
    bad_cwd.cwd = Some("/no/such/dir".into());
    let err = collect(
        start(&client, start_req(bad_cwd)).await.unwrap(),
        |m: StartResponse| m.event,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);

    let err = proc_unary::<_, SendSignalResponse>(
        &client,
        "SendSignal",
        &SendSignalRequest {
            process: by_pid(999_999),
            signal: Signal::Sigterm as i32,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    let connect = client
        .server_stream::<_, ConnectResponse>(
            &rpc_path(SERVICE, "Connect"),
            &ConnectRequest {
                process: by_tag("nope"),
            },
        )
        .await
        .unwrap();
    let err = collect(connect, |m: ConnectResponse| m.event)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    let as_ghost = client.clone().with_header(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Basic Z2hvc3QtdXNlci13cmVubjo="), // "ghost-user-wrenn:"
    );
    let err = collect(
        start(&as_ghost, start_req(cmd("true", &[]))).await.unwrap(),
        |m: StartResponse| m.event,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("does not exist"));

    // Malformed bodies: JSON and protobuf, unary and streaming.
    let http = envd.http();
    let r = http
        .post(envd.url("/process.Process/List"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_argument");
    let r = http
        .post(envd.url("/process.Process/SendSignal"))
        .header("content-type", "application/proto")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(envd.url("/process.Process/List"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // An envelope that claims 4 GiB is refused without buffering.
    let r = http
        .post(envd.url("/process.Process/Start"))
        .header("content-type", "application/connect+json")
        .body(vec![0u8, 0xff, 0xff, 0xff, 0xff, b'{'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body[0], 2, "end-of-stream envelope");
    let v: serde_json::Value = serde_json::from_slice(&body[5..]).unwrap();
    assert_eq!(v["error"]["code"], "resource_exhausted");
}

#[tokio::test]
async fn stdin_and_close_stdin() {
    let envd = Envd::start().await;
    let client = envd.client();
    let mut req = start_req(cmd("cat", &[]));
    req.stdin = Some(true);
    let mut stream = start(&client, req).await.unwrap();
    let pid = match stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .event
        .unwrap()
        .event
    {
        Some(process_event::Event::Start(s)) => s.pid,
        other => panic!("expected start, got {other:?}"),
    };
    for chunk in ["hello ", "world\n"] {
        proc_unary::<_, SendInputResponse>(
            &client,
            "SendInput",
            &SendInputRequest {
                process: by_pid(pid),
                input: Some(ProcessInput {
                    input: Some(process_input::Input::Stdin(
                        chunk.as_bytes().to_vec().into(),
                    )),
                }),
            },
        )
        .await
        .unwrap();
    }
    proc_unary::<_, CloseStdinResponse>(
        &client,
        "CloseStdin",
        &CloseStdinRequest {
            process: by_pid(pid),
        },
    )
    .await
    .unwrap();
    let c = collect(stream, |m: StartResponse| m.event).await.unwrap();
    assert_eq!(c.stdout, b"hello world\n");
    assert_eq!(c.end.unwrap().exit_code, 0);
}

#[tokio::test]
async fn stream_input_keeps_order() {
    let envd = Envd::start().await;
    let client = envd.client();
    let mut req = start_req(cmd("cat", &[]));
    req.stdin = Some(true);
    req.tag = Some("catter".into());
    let stream = start(&client, req).await.unwrap();
    let (tx, done) = client
        .client_stream::<StreamInputRequest, StreamInputResponse>(&rpc_path(SERVICE, "StreamInput"))
        .await
        .unwrap();
    use stream_input_request::{DataEvent, Event, StartEvent};
    tx.send(&StreamInputRequest {
        event: Some(Event::Start(StartEvent {
            process: by_tag("catter"),
        })),
    })
    .await
    .unwrap();
    for i in 0..200 {
        tx.send(&StreamInputRequest {
            event: Some(Event::Data(DataEvent {
                input: Some(ProcessInput {
                    input: Some(process_input::Input::Stdin(
                        format!("{i}\n").into_bytes().into(),
                    )),
                }),
            })),
        })
        .await
        .unwrap();
    }
    tx.finish();
    done.await.unwrap().unwrap();
    proc_unary::<_, CloseStdinResponse>(
        &client,
        "CloseStdin",
        &CloseStdinRequest {
            process: by_tag("catter"),
        },
    )
    .await
    .unwrap();
    let c = collect(stream, |m: StartResponse| m.event).await.unwrap();
    let expected: String = (0..200).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(c.stdout).unwrap(), expected);
}

#[tokio::test]
async fn signals_end_processes_and_children() {
    let envd = Envd::start().await;
    let client = envd.client();
    for (signal, status) in [
        (Signal::Sigterm, "signal: terminated"),
        (Signal::Sigkill, "signal: killed"),
    ] {
        let mut stream = start(&client, start_req(cmd("sleep", &["30"])))
            .await
            .unwrap();
        let pid = match stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .event
            .unwrap()
            .event
        {
            Some(process_event::Event::Start(s)) => s.pid,
            other => panic!("expected start, got {other:?}"),
        };
        proc_unary::<_, SendSignalResponse>(
            &client,
            "SendSignal",
            &SendSignalRequest {
                process: by_pid(pid),
                signal: signal as i32,
            },
        )
        .await
        .unwrap();
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            collect(stream, |m: StartResponse| m.event),
        )
        .await
        .expect("process ends after the signal")
        .unwrap();
        let end = c.end.unwrap();
        assert!(!end.exited);
        assert_eq!(end.status, status);
    }
    // The unspecified signal is refused.
    let err = proc_unary::<_, SendSignalResponse>(
        &client,
        "SendSignal",
        &SendSignalRequest {
            process: by_pid(1),
            signal: 0,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err.code, Code::InvalidArgument | Code::NotFound));
}

#[tokio::test]
async fn pty_runs_a_terminal_that_can_be_resized() {
    let envd = Envd::start().await;
    let client = envd.client();
    let req = StartRequest {
        process: Some(cmd("/bin/sh", &[])),
        pty: Some(Pty {
            size: Some(pty::Size { cols: 80, rows: 24 }),
        }),
        tag: Some("term".into()),
        stdin: None,
    };
    let mut stream = start(&client, req).await.unwrap();
    let send = |text: &'static str| {
        let client = client.clone();
        async move {
            proc_unary::<_, SendInputResponse>(
                &client,
                "SendInput",
                &SendInputRequest {
                    process: by_tag("term"),
                    input: Some(ProcessInput {
                        input: Some(process_input::Input::Pty(text.as_bytes().to_vec().into())),
                    }),
                },
            )
            .await
            .unwrap();
        }
    };
    let mut screen = String::new();
    async fn read_until(
        stream: &mut wrenn_protocol::connect::ResponseStream<StartResponse>,
        screen: &mut String,
        needle: &str,
    ) {
        let fut = async {
            while !screen.contains(needle) {
                let ev = stream.message().await.unwrap().unwrap().event.unwrap();
                if let Some(process_event::Event::Data(d)) = ev.event
                    && let Some(process_event::data_event::Output::Pty(b)) = d.output
                {
                    screen.push_str(&String::from_utf8_lossy(&b));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| panic!("terminal never showed {needle:?}; screen: {screen:?}"));
    }
    send("stty size; tty\n").await;
    read_until(&mut stream, &mut screen, "24 80").await;
    read_until(&mut stream, &mut screen, "/dev/pts/").await;
    proc_unary::<_, UpdateResponse>(
        &client,
        "Update",
        &UpdateRequest {
            process: by_tag("term"),
            pty: Some(Pty {
                size: Some(pty::Size {
                    cols: 100,
                    rows: 40,
                }),
            }),
        },
    )
    .await
    .unwrap();
    send("stty size\n").await;
    read_until(&mut stream, &mut screen, "40 100").await;
    // Closing stdin makes no sense for a terminal.
    let err = proc_unary::<_, CloseStdinResponse>(
        &client,
        "CloseStdin",
        &CloseStdinRequest {
            process: by_tag("term"),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::FailedPrecondition);
    send("exit 7\n").await;
    let c = collect(stream, |m: StartResponse| m.event).await.unwrap();
    assert_eq!(c.end.unwrap().exit_code, 7);
}

#[tokio::test]
async fn processes_outlive_their_stream_and_can_be_reattached() {
    let envd = Envd::start().await;
    let client = envd.client();
    let mut req = start_req(sh(
        "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done",
    ));
    req.tag = Some("ticker".into());
    let mut stream = start(&client, req).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    let pid = match first.event.unwrap().event {
        Some(process_event::Event::Start(s)) => s.pid,
        other => panic!("expected start, got {other:?}"),
    };
    drop(stream); // The client goes away; the process must keep running.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let list: ListResponse = proc_unary(&client, "List", &ListRequest {}).await.unwrap();
    let info = list
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("still listed");
    assert_eq!(info.tag.as_deref(), Some("ticker"));
    assert_eq!(info.config.as_ref().unwrap().cmd, "/bin/sh");

    let stream = client
        .server_stream::<_, ConnectResponse>(
            &rpc_path(SERVICE, "Connect"),
            &ConnectRequest {
                process: by_tag("ticker"),
            },
        )
        .await
        .unwrap();
    let c = collect(stream, |m: ConnectResponse| m.event).await.unwrap();
    assert!(c.order_ok);
    assert_eq!(c.pid, pid);
    let out = String::from_utf8(c.stdout).unwrap();
    assert!(!out.contains("tick 0\n"), "no replay of old output: {out}");
    assert!(
        out.contains("tick 39\n"),
        "live output up to the end: {out}"
    );
    assert_eq!(c.end.unwrap().exit_code, 0);
    let list: ListResponse = proc_unary(&client, "List", &ListRequest {}).await.unwrap();
    assert!(
        list.processes.iter().all(|p| p.pid != pid),
        "ended processes leave the table"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_processes() {
    let envd = Envd::start().await;
    let client = envd.client();
    let runs = (0..100).map(|i| {
        let client = client.clone();
        async move {
            let c = run(&client, sh(&format!("echo proc-{i}; exit {}", i % 7))).await;
            (i, c)
        }
    });
    for (i, c) in futures::future::join_all(runs).await {
        assert_eq!(String::from_utf8(c.stdout).unwrap(), format!("proc-{i}\n"));
        assert_eq!(c.end.unwrap().exit_code, i % 7);
    }
}

#[tokio::test]
async fn large_output_to_a_slow_client_loses_nothing() {
    let envd = Envd::start().await;
    let client = envd.client();
    // 64 MiB of numbered lines, read by a client that pauses now and then.
    let lines = 2_000_000u64;
    let stream = start(&client, start_req(cmd("seq", &["1", &lines.to_string()])))
        .await
        .unwrap();
    let mut stream = stream;
    let mut hasher_bytes = 0u64;
    let mut last_line_start = Vec::new();
    let mut n = 0u64;
    let mut end = None;
    while let Some(msg) = stream.message().await {
        match msg.unwrap().event.unwrap().event {
            Some(process_event::Event::Data(d)) => {
                if let Some(process_event::data_event::Output::Stdout(b)) = d.output {
                    hasher_bytes += b.len() as u64;
                    n += b.iter().filter(|c| **c == b'\n').count() as u64;
                    last_line_start = b.to_vec();
                }
                if n % 200_000 < 2_000 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Some(process_event::Event::End(e)) => end = Some(e),
            _ => {}
        }
    }
    let expected: u64 = (1..=lines).map(|i| i.to_string().len() as u64 + 1).sum();
    assert_eq!(hasher_bytes, expected);
    assert_eq!(n, lines);
    assert!(String::from_utf8_lossy(&last_line_start).ends_with("2000000\n"));
    assert_eq!(end.unwrap().exit_code, 0);
}
