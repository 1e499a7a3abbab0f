//! `bindings.localstorage`: create, get, list and delete beneath `rootPath`,
//! generated names, the `maxResponseBytes` bound, and every way out of
//! `rootPath` refused: `..`, an absolute name, and symbolic links planted
//! inside pointing outside (as the last component or on the way).

mod common;

use common::{invoke, meta, ok, refused, serve};
use mecha_module::testing::spec;
use mecha_module::Status;

fn setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    mecha_module::testing::Served<mecha_mod_bindings::BindingsModule>,
) {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("files");
    let m = serve(
        dir.path(),
        vec![spec(
            "files",
            "bindings.localstorage",
            &[("rootPath", "files"), ("maxResponseBytes", "1000")],
        )],
    );
    (dir, root, m)
}

#[test]
fn files_are_created_read_listed_and_deleted() {
    let (_dir, root, m) = setup();
    let created = ok(&invoke(
        &m,
        "t",
        "files",
        "create",
        b"one",
        &[("fileName", "a.txt")],
    ));
    assert_eq!(meta(&created, "fileName"), Some("a.txt"));
    assert_eq!(std::fs::read(root.join("a.txt")).expect("written"), b"one");
    let generated = ok(&invoke(&m, "t", "files", "create", b"two", &[]));
    let name = meta(&generated, "fileName")
        .expect("a generated name")
        .to_owned();
    assert_ne!(name, "a.txt");
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    ok(&invoke(
        &m,
        "t",
        "files",
        "create",
        b"three",
        &[("fileName", "sub/c.txt")],
    ));

    let got = ok(&invoke(
        &m,
        "t",
        "files",
        "get",
        b"",
        &[("fileName", &name)],
    ));
    assert_eq!(got.data, b"two");
    let listed = ok(&invoke(&m, "t", "files", "list", b"", &[]));
    let names: Vec<String> = serde_json::from_slice(&listed.data).expect("a JSON array");
    let mut expected = vec!["a.txt".to_owned(), name.clone(), "sub/c.txt".to_owned()];
    expected.sort();
    assert_eq!(names, expected);

    ok(&invoke(
        &m,
        "t",
        "files",
        "delete",
        b"",
        &[("fileName", "a.txt")],
    ));
    refused(
        &invoke(&m, "t", "files", "get", b"", &[("fileName", "a.txt")]),
        Status::NotFound,
        "a.txt",
    );
    refused(
        &invoke(&m, "t", "files", "get", b"", &[]),
        Status::InvalidArgument,
        "fileName",
    );
    refused(
        &invoke(&m, "t", "files", "move", b"", &[]),
        Status::InvalidArgument,
        "move",
    );
}

#[test]
fn a_file_over_the_limit_is_resource_exhausted() {
    let (_dir, root, m) = setup();
    std::fs::write(root.join("big"), vec![b'x'; 1001]).expect("write");
    refused(
        &invoke(&m, "t", "files", "get", b"", &[("fileName", "big")]),
        Status::ResourceExhausted,
        "maxResponseBytes",
    );
    std::fs::write(root.join("fits"), vec![b'x'; 1000]).expect("write");
    assert_eq!(
        ok(&invoke(
            &m,
            "t",
            "files",
            "get",
            b"",
            &[("fileName", "fits")]
        ))
        .data
        .len(),
        1000
    );
}

#[test]
fn names_that_leave_the_root_are_refused() {
    let (dir, root, m) = setup();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("door")).expect("symlink");
    let escapes = [
        "../outside/secret",
        "sub/../../outside/secret",
        "/etc/passwd",
        "link",
        "door/secret",
        "door/new",
    ];
    for name in escapes {
        for op in ["get", "create", "delete"] {
            let reply = invoke(&m, "t", "files", op, b"planted", &[("fileName", name)]);
            assert_eq!(
                reply.status,
                Status::InvalidArgument,
                "{op} {name}: {}",
                common::message(&reply)
            );
        }
    }
    // Nothing outside was read, written or removed.
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("still there"),
        b"secret"
    );
    assert!(!outside.join("new").exists());
    // Listing does not follow the links either.
    let listed = ok(&invoke(&m, "t", "files", "list", b"", &[]));
    let names: Vec<String> = serde_json::from_slice(&listed.data).expect("a JSON array");
    assert!(names.is_empty(), "{names:?}");
}
