//! Helpers shared by the CLI test files: run the built `geolife` binary and read its output.
// Each test file uses its own subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `geolife` binary of this build with `args`.
pub fn geolife(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geolife"))
        .args(args)
        .output()
        .expect("run geolife")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// (stdout, stderr) as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs geolife, asserts exit code `code`, returns (stdout, stderr).
pub fn run_expect(args: &[&str], code: i32) -> (String, String) {
    let out = geolife(args);
    let (o, e) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "geolife {args:?}\nstdout:\n{o}\nstderr:\n{e}"
    );
    (o, e)
}

/// Runs geolife, asserts success, parses its stdout as JSON.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = geolife(args);
    assert!(
        out.status.success(),
        "geolife {args:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}
