//! The `filesystem.Filesystem` service against a real envd.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use wrenn_protocol::connect::Code;
use wrenn_protocol::envd::filesystem::*;
use wrenn_protocol::envd::rpc_path;

fn p(path: &std::path::Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn directory_operations() {
    let envd = Envd::start().await;
    let c = envd.json_client();
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();

    let made: MakeDirResponse = fs_unary(
        &c,
        "MakeDir",
        &MakeDirRequest {
            path: p(&root.join("a/b/c")),
        },
    )
    .await
    .unwrap();
    let e = made.entry.unwrap();
    assert_eq!(e.r#type, FileType::Directory as i32);
    assert_eq!(e.name, "c");
    assert!(e.permissions.starts_with('d'));
    let err = fs_unary::<_, MakeDirResponse>(
        &c,
        "MakeDir",
        &MakeDirRequest {
            path: p(&root.join("a/b/c")),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists);

    std::fs::write(root.join("a/file.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink(root.join("a/file.txt"), root.join("a/link")).unwrap();
    let err = fs_unary::<_, MakeDirResponse>(
        &c,
        "MakeDir",
        &MakeDirRequest {
            path: p(&root.join("a/file.txt")),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);

    let st: StatResponse = fs_unary(
        &c,
        "Stat",
        &StatRequest {
            path: p(&root.join("a/file.txt")),
        },
    )
    .await
    .unwrap();
    let e = st.entry.unwrap();
    assert_eq!(e.size, 5);
    assert_eq!(e.r#type, FileType::File as i32);
    assert_eq!(
        e.mode & 0o777,
        std::fs::metadata(root.join("a/file.txt"))
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            })
            .unwrap()
    );
    assert!(e.modified_time.unwrap().seconds > 1_600_000_000);
    assert!(!e.owner.is_empty() && !e.group.is_empty());

    let link: StatResponse = fs_unary(
        &c,
        "Stat",
        &StatRequest {
            path: p(&root.join("a/link")),
        },
    )
    .await
    .unwrap();
    let link = link.entry.unwrap();
    assert_eq!(link.r#type, FileType::Symlink as i32);
    assert_eq!(link.symlink_target.unwrap(), p(&root.join("a/file.txt")));

    let l1: ListDirResponse = fs_unary(
        &c,
        "ListDir",
        &ListDirRequest {
            path: p(&root.join("a")),
            depth: 1,
        },
    )
    .await
    .unwrap();
    let names: Vec<_> = l1.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["b", "file.txt", "link"]);
    let l3: ListDirResponse = fs_unary(
        &c,
        "ListDir",
        &ListDirRequest {
            path: p(&root.join("a")),
            depth: 3,
        },
    )
    .await
    .unwrap();
    let paths: Vec<_> = l3.entries.iter().map(|e| e.path.clone()).collect();
    assert!(paths.contains(&p(&root.join("a/b/c"))), "{paths:?}");
    let err = fs_unary::<_, ListDirResponse>(
        &c,
        "ListDir",
        &ListDirRequest {
            path: p(&root.join("nope")),
            depth: 1,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let err = fs_unary::<_, ListDirResponse>(
        &c,
        "ListDir",
        &ListDirRequest {
            path: p(&root.join("a/file.txt")),
            depth: 1,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);

    let moved: MoveResponse = fs_unary(
        &c,
        "Move",
        &MoveRequest {
            source: p(&root.join("a/file.txt")),
            destination: p(&root.join("x/y/moved.txt")),
        },
    )
    .await
    .unwrap();
    assert_eq!(moved.entry.unwrap().path, p(&root.join("x/y/moved.txt")));
    assert_eq!(std::fs::read(root.join("x/y/moved.txt")).unwrap(), b"hello");

    let _: RemoveResponse = fs_unary(
        &c,
        "Remove",
        &RemoveRequest {
            path: p(&root.join("a")),
        },
    )
    .await
    .unwrap();
    assert!(!root.join("a").exists());
    let err = fs_unary::<_, RemoveResponse>(
        &c,
        "Remove",
        &RemoveRequest {
            path: p(&root.join("a")),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let err = fs_unary::<_, StatResponse>(
        &c,
        "Stat",
        &StatRequest {
            path: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
}

#[tokio::test]
async fn paths_resolve_for_the_user() {
    let envd = Envd::start().await;
    let c = envd.client();
    let home = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .dir;
    let st: StatResponse = fs_unary(&c, "Stat", &StatRequest { path: "~".into() })
        .await
        .unwrap();
    assert_eq!(st.entry.unwrap().path, p(&home));
    let st: StatResponse = fs_unary(
        &c,
        "Stat",
        &StatRequest {
            path: "/tmp/../tmp/.".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(st.entry.unwrap().path, "/tmp");
}

#[tokio::test]
async fn watch_dir_streams_changes() {
    let envd = Envd::start().await;
    let c = envd.client();
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut stream = c
        .server_stream::<_, WatchDirResponse>(
            &rpc_path(SERVICE, "WatchDir"),
            &WatchDirRequest {
                path: p(&root),
                recursive: true,
                include_entry: true,
            },
        )
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(watch_dir_response::Event::Start(_))
    ));
    std::fs::write(root.join("new.txt"), b"x").unwrap();
    std::fs::write(root.join("sub/deep.txt"), b"y").unwrap();
    std::fs::remove_file(root.join("new.txt")).unwrap();
    let mut seen = Vec::new();
    let got_all = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = stream.message().await {
            if let Some(watch_dir_response::Event::Filesystem(e)) = msg.event {
                seen.push((e.name.clone(), e.r#type, e.entry.is_some()));
                let has = |n: &str, t: EventType| {
                    seen.iter()
                        .any(|(name, ty, _)| name == n && *ty == t as i32)
                };
                if has("new.txt", EventType::Create)
                    && has("sub/deep.txt", EventType::Create)
                    && has("new.txt", EventType::Remove)
                {
                    return;
                }
            }
        }
    })
    .await;
    assert!(got_all.is_ok(), "events seen: {seen:?}");
    // new.txt is removed at once, so it may be gone before its entry is read; deep.txt stays.
    assert!(
        seen.iter()
            .any(|(n, t, entry)| n == "sub/deep.txt" && *t == EventType::Create as i32 && *entry)
    );

    let err = c
        .server_stream::<_, WatchDirResponse>(
            &rpc_path(SERVICE, "WatchDir"),
            &WatchDirRequest {
                path: p(&root.join("missing")),
                recursive: false,
                include_entry: false,
            },
        )
        .await
        .unwrap()
        .message()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn polled_watchers() {
    let envd = Envd::start().await;
    let c = envd.client();
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let w: CreateWatcherResponse = fs_unary(
        &c,
        "CreateWatcher",
        &CreateWatcherRequest {
            path: p(&root),
            recursive: false,
            include_entry: false,
        },
    )
    .await
    .unwrap();
    assert!(w.watcher_id.starts_with("w-"));
    std::fs::write(root.join("a"), b"1").unwrap();
    std::fs::rename(root.join("a"), root.join("b")).unwrap();
    std::os::unix::fs::symlink("b", root.join("c")).unwrap();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut ok = false;
    while std::time::Instant::now() < deadline && !ok {
        let r: GetWatcherEventsResponse = fs_unary(
            &c,
            "GetWatcherEvents",
            &GetWatcherEventsRequest {
                watcher_id: w.watcher_id.clone(),
            },
        )
        .await
        .unwrap();
        events.extend(r.events);
        ok = events.iter().any(|e| e.r#type == EventType::Rename as i32)
            && events
                .iter()
                .any(|e| e.name == "c" && e.r#type == EventType::Create as i32);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "events: {events:?}");
    let _: RemoveWatcherResponse = fs_unary(
        &c,
        "RemoveWatcher",
        &RemoveWatcherRequest {
            watcher_id: w.watcher_id.clone(),
        },
    )
    .await
    .unwrap();
    let err = fs_unary::<_, GetWatcherEventsResponse>(
        &c,
        "GetWatcherEvents",
        &GetWatcherEventsRequest {
            watcher_id: w.watcher_id,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}
