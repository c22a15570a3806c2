//! The README's walkthrough, run as written against the real server.
//!
//! How it works: the block between `<!-- walkthrough:start -->` and
//! `<!-- walkthrough:end -->` holds `$ shardcap …` commands, each followed by the output it
//! prints. The test starts a 2-core server with the embedded default's `demo` pool, runs
//! each command with the built binary (`SHARDCAP_SERVER` points it at the test server) and
//! compares stdout and stderr line by line: runs of spaces compare equal, and `…` matches
//! any text. A command whose expected output contains an `error:` line must exit with 1,
//! any other with 0. So the README cannot drift from what the CLI does.

#![cfg(feature = "server")]

mod common;

use std::process::Command;

use common::{Server, pool};

/// Matches `text` against `pattern`, where `…` stands for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else { return false };
            rest = &rest[pos + part.len()..];
        }
    }
    rest.is_empty()
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn glob_matches_as_documented() {
    assert!(glob("a … b", "a 1 2 b"));
    assert!(glob("…", ""));
    assert!(glob("x…", "xyz"));
    assert!(!glob("x…z", "xy"));
    assert!(!glob("abc", "abcd"));
}

#[test]
fn readme_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- walkthrough:start -->").expect("walkthrough start marker");
    let end = readme.find("<!-- walkthrough:end -->").expect("walkthrough end marker");
    let block = &readme[start..end];
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines().filter(|l| !l.starts_with("```") && !l.starts_with("<!--")) {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push((command.to_string(), Vec::new()));
        } else if let Some((_, expected)) = steps.last_mut() {
            expected.push(line.to_string());
        }
    }
    assert!(steps.len() >= 10, "the walkthrough has its steps");

    let server = Server::start(2, &pool("demo", 1000));
    for (command, expected) in &steps {
        let mut words = command.split_whitespace();
        assert_eq!(words.next(), Some("shardcap"), "walkthrough commands run shardcap: {command}");
        let output = Command::new(env!("CARGO_BIN_EXE_shardcap"))
            .args(words)
            .env("SHARDCAP_SERVER", server.addr.to_string())
            .output()
            .expect("run shardcap");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let actual: Vec<String> = stdout.lines().chain(stderr.lines()).map(normalize).collect();
        let expected_exit = if expected.iter().any(|l| l.starts_with("error:")) { 1 } else { 0 };
        assert_eq!(
            output.status.code(),
            Some(expected_exit),
            "exit code of `{command}`\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert_eq!(actual.len(), expected.len(), "line count of `{command}`:\n{}", actual.join("\n"));
        for (want, got) in expected.iter().zip(&actual) {
            assert!(glob(&normalize(want), got), "`{command}`:\n  expected: {want}\n  actual:   {got}");
        }
    }
}
