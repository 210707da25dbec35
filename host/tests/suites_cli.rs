//! `wayplug test` and `wayplug new` as a person runs them: exit codes,
//! the text they print, the files they write, and their errors for bad
//! input.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn suites() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/suites")
}

/// Runs `wayplug ARGS` to completion (at most 120 s).
fn wayplug(args: &[&str], dir: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayplug"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = wait(cmd.spawn().unwrap(), Duration::from_secs(120));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for `child` (at most `limit`), reading its output as it comes so a
/// full pipe never stalls it.
fn wait(mut child: std::process::Child, limit: Duration) -> Output {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn tempdir(tag: &str) -> tempfile::TempDir {
    // Removed when dropped, also when the test fails.
    tempfile::Builder::new()
        .prefix(&format!("wayplug-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// Each run loads a waypoint, which compiles the built-in components: the
// tests below share runs where they can.

#[test]
fn a_failing_expectation_exits_1_with_a_diff_naming_the_case() {
    let (code, out, _) = wayplug(&["test", &s(&suites().join("failing.yaml"))], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL mallory expected in: deny 403"), "{out}");
    assert!(out.contains("allow: expected allow, got deny"), "{out}");
    assert!(out.contains("status: expected 200, got 403"), "{out}");
    assert!(out.contains("failing: 1 passed, 1 failed"), "{out}");
}

#[test]
fn junit_and_min_coverage_fail_a_suite_for_ci() {
    let dir_guard = tempdir("cov");
    let dir = dir_guard.path();
    let suite = dir.join("one.yaml");
    std::fs::write(
        &suite,
        format!(
            "name: one\nconfig: {}\ndefaults: {{ request: {{ service: store.store.svc.cluster.local, path: /cart }} }}\ncases:\n  - {{ name: alice, request: {{ headers: {{ x-user: alice }} }}, expect: {{ status: 200 }} }}\n  - {{ name: \"bob <b>\", request: {{ headers: {{ x-user: bob }} }}, expect: {{ status: 201 }} }}\n",
            s(&suites().join("store/waypoint.yaml"))
        ),
    )
    .unwrap();
    let (code, xml, err) = wayplug(
        &[
            "test",
            "--format",
            "junit",
            "--min-coverage",
            "50",
            &s(&suite),
        ],
        None,
    );
    assert_eq!(code, 1, "{xml}{err}");
    assert!(
        err.contains("coverage 33.3% is below --min-coverage 50"),
        "{err}"
    );
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains(r#"<testsuite name="one" tests="2" failures="1">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="one" name="alice"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="one" name="bob &lt;b&gt;">"#)
            && xml.contains(r#"<failure message="status: expected 201, got 200">"#),
        "{xml}"
    );
}

#[test]
fn passing_suites_exit_0_with_coverage_changes_and_insta_snapshots() {
    let dir_guard = tempdir("snap");
    let dir = dir_guard.path();
    let store = s(&suites().join("store.yaml"));
    let v2 = s(&suites().join("store/policies-v2"));
    let (code, out, err) = wayplug(
        &[
            "test",
            "--coverage",
            "--explain",
            "--snapshot",
            &s(dir),
            "--against",
            &v2,
            &store,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("coverage: 6/6 rules exercised (100.0%)"),
        "{out}"
    );
    assert!(out.contains("store: 10 passed, 0 failed"), "{out}");
    assert!(out.contains("5 case(s) decided differently:"), "{out}");
    assert!(
        out.contains("  old links are redirected:\n    before: deny 301"),
        "{out}"
    );
    assert!(!out.contains("INFO"), "logs stay off stdout: {out}");
    let snap = dir.join("store__alice_reads_the_api.snap");
    let text = std::fs::read_to_string(&snap).unwrap();
    assert!(text.starts_with("---\nsource: "), "{text}");
    assert!(
        text.contains("\nexpression: alice reads the api\n---\nverdict: allow\nstatus: 200\n"),
        "{text}"
    );

    // A changed outcome fails the run and waits for review as .snap.new.
    std::fs::write(&snap, text.replace("status: 200", "status: 201")).unwrap();
    let (code, json, _) = wayplug(
        &["test", "--format", "json", "--snapshot", &s(dir), &store],
        None,
    );
    assert_eq!(code, 1, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(v["failed"], 0, "the cases themselves pass");
    assert_eq!(v["suites"][0]["cases"][0]["outcome"]["verdict"], "allow");
    let noted = v["suites"][0]["snapshots"][0].as_str().unwrap();
    assert!(
        noted.starts_with("alice reads the api: changed; review"),
        "{noted}"
    );
    let pending = std::fs::read_to_string(dir.join("store__alice_reads_the_api.snap.new")).unwrap();
    assert!(pending.contains("status: 200"), "{pending}");
}

#[test]
fn bad_suites_are_refused_naming_the_file_the_case_and_the_field() {
    let dir_guard = tempdir("bad");
    let dir = dir_guard.path();
    let config = s(&suites().join("store/waypoint.yaml"));
    let cases = [
        (
            "missing.yaml",
            "config: nowhere.yaml\ncases: []\n".to_owned(),
            vec![
                "missing.yaml",
                "field `config`",
                "nowhere.yaml does not exist",
            ],
        ),
        (
            "unknown.yaml",
            format!(
                "config: {config}\ncases:\n  - name: typo\n    request: {{ service: a, methd: GET }}\n"
            ),
            vec![
                "unknown.yaml",
                "case 0 (\"typo\")",
                "field `cases[0].request.methd`",
                "unknown field `methd`",
            ],
        ),
        (
            "method.yaml",
            format!(
                "config: {config}\ncases:\n  - name: ok\n    request: {{ service: a }}\n  - name: spaced\n    request: {{ service: a, method: \"GE T\" }}\n"
            ),
            vec![
                "method.yaml",
                "case 1 (\"spaced\")",
                "field `cases[1].request.method`",
                "\"GE T\" is not an HTTP method",
            ],
        ),
        (
            "header.yaml",
            format!(
                "config: {config}\ncases:\n  - name: bad header\n    request: {{ service: a, headers: {{ \"x bad\": v }} }}\n"
            ),
            vec![
                "header.yaml",
                "case 0 (\"bad header\")",
                "field `cases[0].request.headers.x bad`",
                "not a valid header name",
            ],
        ),
        (
            "top.yaml",
            format!("config: {config}\ncasez: []\n"),
            vec!["top.yaml", "unknown field `casez`"],
        ),
    ];
    for (file, text, wants) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = wayplug(&["test", &s(&path)], None);
        assert_eq!(code, 1, "{file}: {out}{err}");
        for want in wants {
            assert!(err.contains(want), "{file}: {want:?} not in {err}");
        }
    }
}

/// The workspace's guest target directory: warm with the SDK's and
/// proxy-wasm's dependencies for wasm targets, and never locked by the
/// `cargo test` running this.
fn guest_target_dir() -> PathBuf {
    // .../target/debug/deps/suites_cli-HASH
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("wasm-guests")
}

fn cargo(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", guest_target_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // What the outer cargo set for this test must not steer the nested one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let out = wait(cmd.spawn().unwrap(), Duration::from_secs(600));
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_plugins_build_pass_their_tests_and_their_suite() {
    let root_guard = tempdir("new");
    let root = root_guard.path();
    for (abi, target) in [
        ("component", "wasm32-wasip2"),
        ("proxy-wasm", "wasm32-wasip1"),
    ] {
        let name = format!("my-{abi}-policy");
        let dir = root.join(&name);
        let (code, out, err) = wayplug(&["new", &name, "--abi", abi, "--dir", &s(&dir)], None);
        assert_eq!(code, 0, "{out}{err}");
        for f in [
            "Cargo.toml",
            "src/lib.rs",
            "suite.yaml",
            "waypoint.yaml",
            "README.md",
        ] {
            assert!(dir.join(f).is_file(), "{abi}: {f} missing");
        }
        cargo(&dir, &["test"]);
        cargo(&dir, &["build", "--release", "--target", target]);
        // The suite names the crate's own target folder, where a plain
        // `cargo build` puts the module; this build used the shared one.
        let file = format!("{}.wasm", name.replace('-', "_"));
        let built = guest_target_dir().join(target).join("release").join(&file);
        let expected = dir.join("target").join(target).join("release");
        std::fs::create_dir_all(&expected).unwrap();
        std::fs::copy(&built, expected.join(&file)).unwrap();
        let (code, out, err) = wayplug(&["test", "suite.yaml", "--explain"], Some(&dir));
        assert_eq!(code, 0, "{abi}: {out}{err}");
        assert!(
            out.contains(&format!("{name}: 3 passed, 0 failed")),
            "{out}"
        );
        assert!(
            out.contains(&format!("why: [{name}] {name} rule 0 -> allow")),
            "{out}"
        );
    }
    let (code, _, err) = wayplug(&["new", "Bad_Name"], Some(root));
    assert_eq!(code, 1);
    assert!(err.contains("`Bad_Name` is not a crate name"), "{err}");
}
