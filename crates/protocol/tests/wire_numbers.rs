//! Field numbers and wire types are the contract with upstream envd and E2B clients: a change
//! here breaks every deployed SDK. These checks decode hand-written protobuf bytes.
#![allow(clippy::unwrap_used)]

use prost::Message;
use wrenn_protocol::envd::{filesystem as fs, process as p};

#[test]
fn process_messages_keep_their_numbers() {
    // StartRequest{process=1{cmd=1,args=2,cwd=4}, tag=3, stdin=4}
    let bytes = [
        0x0a, 0x0b, 0x0a, 0x02, b's', b'h', 0x12, 0x01, b'x', 0x22, 0x02, b'/', b't', //
        0x1a, 0x01, b't', 0x20, 0x00,
    ];
    let req = p::StartRequest::decode(&bytes[..]).unwrap();
    let cfg = req.process.unwrap();
    assert_eq!(cfg.cmd, "sh");
    assert_eq!(cfg.args, ["x"]);
    assert_eq!(cfg.cwd.as_deref(), Some("/t"));
    assert_eq!(req.tag.as_deref(), Some("t"));
    assert_eq!(req.stdin, Some(false));

    // ProcessEvent{end=3{exit_code=1 (sint32, zigzag), exited=2, status=3}}
    let end =
        p::ProcessEvent::decode(&[0x1a, 0x06, 0x08, 0x03, 0x10, 0x01, 0x1a, 0x00][..]).unwrap();
    match end.event.unwrap() {
        p::process_event::Event::End(e) => {
            assert_eq!(e.exit_code, -2, "sint32 zigzag: 3 means -2");
            assert!(e.exited);
        }
        other => panic!("{other:?}"),
    }
    // DataEvent stdout=1, stderr=2, pty=3 inside event data=2; keepalive=4.
    let data = p::ProcessEvent::decode(&[0x12, 0x03, 0x1a, 0x01, b'z'][..]).unwrap();
    assert!(matches!(
        data.event,
        Some(p::process_event::Event::Data(p::process_event::DataEvent {
            output: Some(p::process_event::data_event::Output::Pty(_))
        }))
    ));
    let ka = p::ProcessEvent::decode(&[0x22, 0x00][..]).unwrap();
    assert!(matches!(
        ka.event,
        Some(p::process_event::Event::Keepalive(_))
    ));
    // ProcessSelector pid=1, tag=2; Signal SIGKILL=9, SIGTERM=15.
    let sig =
        p::SendSignalRequest::decode(&[0x0a, 0x03, 0x12, 0x01, b'a', 0x10, 0x09][..]).unwrap();
    assert_eq!(sig.signal, p::Signal::Sigkill as i32);
    assert_eq!(p::Signal::Sigterm as i32, 15);
    // PTY{size=1{cols=1, rows=2}} in UpdateRequest pty=2.
    let up =
        p::UpdateRequest::decode(&[0x12, 0x06, 0x0a, 0x04, 0x08, 0x50, 0x10, 0x18][..]).unwrap();
    let size = up.pty.unwrap().size.unwrap();
    assert_eq!((size.cols, size.rows), (80, 24));
}

#[test]
fn filesystem_messages_keep_their_numbers() {
    // EntryInfo{name=1, type=2, size=4, mode=5, modified_time=9{seconds=1}, symlink_target=10}
    let bytes = [
        0x0a, 0x01, b'n', 0x10, 0x03, 0x20, 0x07, 0x28, 0xa4, 0x03, 0x4a, 0x02, 0x08, 0x05, //
        0x52, 0x01, b'/',
    ];
    let e = fs::EntryInfo::decode(&bytes[..]).unwrap();
    assert_eq!(e.name, "n");
    assert_eq!(e.r#type, fs::FileType::Symlink as i32);
    assert_eq!(e.size, 7);
    assert_eq!(e.mode, 0o644);
    assert_eq!(e.modified_time.unwrap().seconds, 5);
    assert_eq!(e.symlink_target.as_deref(), Some("/"));
    // WatchDirRequest{path=1, recursive=2, include_entry=3}; EventType WRITE=2, CHMOD=5.
    let w = fs::WatchDirRequest::decode(&[0x0a, 0x01, b'/', 0x10, 0x01, 0x18, 0x01][..]).unwrap();
    assert!(w.recursive && w.include_entry);
    assert_eq!(fs::EventType::Write as i32, 2);
    assert_eq!(fs::EventType::Chmod as i32, 5);
    // ListDirRequest{path=1, depth=2}
    let l = fs::ListDirRequest::decode(&[0x10, 0x03][..]).unwrap();
    assert_eq!(l.depth, 3);
}

#[test]
fn json_names_follow_the_proto3_mapping() {
    let ev: p::ProcessEvent =
        serde_json::from_str(r#"{"end":{"exitCode":-1,"exited":false,"status":"signal: killed"}}"#)
            .unwrap();
    assert!(matches!(ev.event, Some(p::process_event::Event::End(ref e)) if e.exit_code == -1));
    let out = serde_json::to_value(p::ProcessEvent {
        event: Some(p::process_event::Event::Data(p::process_event::DataEvent {
            output: Some(p::process_event::data_event::Output::Stdout(
                b"hi\n".to_vec().into(),
            )),
        })),
    })
    .unwrap();
    assert_eq!(out["data"]["stdout"], "aGkK");
    let e = serde_json::to_value(fs::EntryInfo {
        size: 5,
        r#type: fs::FileType::File as i32,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(e["size"], "5", "int64 is a JSON string");
    assert_eq!(e["type"], "FILE_TYPE_FILE");
}
