//! Regressions from the outside review: results that said the wrong thing. Each test fails
//! without its fix.

mod common;

use common::{assert_status, request, sandbox};
use wsbx::{InputFile, Language, Status};

#[test]
fn every_exit_status_a_guest_can_make_is_its_exit_code() {
    let cases = [
        (Language::Javascript, "process.exit(126)", 126),
        (Language::Javascript, "process.exit(255)", 255),
        (Language::Javascript, "process.exit(-1)", 255),
        (Language::Python, "import os; os._exit(200)", 200),
        (Language::Python, "import sys; sys.exit(255)", 255),
    ];
    for (language, code, expected) in cases {
        let r = sandbox().run(&request(language, code));
        assert_eq!((r.status, r.exit_code), (Status::Error, Some(expected)), "{code}: {r:#?}");
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["exec", "--lang", "javascript", "-c", "process.exit(200)"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(200));
}

#[test]
fn conflicting_or_overlong_input_paths_are_rejected() {
    let long = "x".repeat(256);
    for paths in [vec!["a", "a/b"], vec![long.as_str()]] {
        let mut req = request(Language::Python, "pass");
        req.files = paths.iter().map(|p| InputFile { path: (*p).to_owned(), content: b"x".to_vec() }).collect();
        let r = sandbox().run(&req);
        assert_status(&r, Status::Rejected);
    }
}

#[test]
fn a_tree_too_deep_to_return_is_skipped_and_reported() {
    let name = "d".repeat(200);
    let mut req = request(Language::Shell, &format!("echo top > top; for i in $(seq 30); do mkdir {name} && cd {name}; done; echo deep > f"));
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    let files = r.files.unwrap();
    assert!(files.iter().any(|f| f.path == "top"), "{files:?}");
    assert!(!r.files_skipped.is_empty());
    assert!(r.files_skipped.iter().all(|s| s.reason.contains("4096")), "{:?}", r.files_skipped);
}

#[test]
fn non_utf8_file_names_stay_distinct_and_escaped() {
    // WASI names are UTF-8: a shell job makes the others.
    let mut req = request(Language::Shell, r"echo a > $'\xff'; echo b > $'\xfe'; echo c > 'back\slash'");
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    let mut paths: Vec<_> = r.files.unwrap().into_iter().map(|f| f.path).collect();
    paths.sort();
    assert_eq!(paths, ["\\xfe", "\\xff", "back\\\\slash"]);
}

#[test]
fn returned_files_carry_size_and_media_type() {
    let mut req = request(Language::Python, "open('t.csv', 'w').write('a,b\\n')");
    req.return_files = true;
    let r = sandbox().run(&req);
    let files = r.files.unwrap();
    assert_eq!((files[0].size, files[0].mime_type.as_str()), (4, "text/csv"));
}
