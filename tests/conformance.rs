//! libiscsi's conformance suite (`iscsi-test-cu`, Debian package libiscsi-bin), whole ALL
//! family with --dataloss, against `isboot export` of a scratch image.
//!
//! Every test named in `tests/conformance/expected-pass.txt` must pass; a test that newly
//! passes is reported so the list can grow. `ISBOOT_CONFORMANCE_OUT=FILE` keeps the raw output.

mod fixture;

use fixture::*;
use std::collections::BTreeMap;
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    Failed,
    Skipped,
}

/// Parse `iscsi-test-cu -v` output into Suite.Test -> verdict.
fn parse(out: &str) -> BTreeMap<String, Verdict> {
    let mut res = BTreeMap::new();
    let mut suite = String::new();
    let mut current: Option<(String, bool)> = None;
    let settle =
        |cur: &mut Option<(String, bool)>, v: Verdict, res: &mut BTreeMap<String, Verdict>| {
            if let Some((name, skipped)) = cur.take() {
                let v = if v == Verdict::Passed && skipped {
                    Verdict::Skipped
                } else {
                    v
                };
                res.insert(name, v);
            }
        };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
            continue;
        }
        let mut rest = line;
        if let Some(t) = line.trim_start().strip_prefix("Test: ") {
            let name = t.split(" ...").next().unwrap_or(t).trim();
            current = Some((format!("{suite}.{name}"), false));
            rest = t.split_once(" ...").map(|x| x.1).unwrap_or("");
        }
        if rest.contains("[SKIPPED]") {
            if let Some(c) = current.as_mut() {
                c.1 = true;
            }
        }
        // The verdict word starts the rest of the "Test:" line or a line of its own; text a
        // test prints after its verdict (teardown) may follow it on the same line.
        let r = rest.trim_start();
        if r.starts_with("passed") {
            settle(&mut current, Verdict::Passed, &mut res);
        } else if r.starts_with("FAILED") {
            settle(&mut current, Verdict::Failed, &mut res);
        }
    }
    res
}

#[test]
fn parser_reads_verdicts() {
    let out = "Suite: A\n  Test: W ...passed    [FAILED] printed in teardown\n  Test: X ...passed\n  Test: Y ...    [SKIPPED] no\n    [SKIPPED] no\npassed\n  Test: Z ...    [FAILED] bad\nFAILED\n    1. f.c:1\nSuite: B\n  Test: X ...passed\n";
    let r = parse(out);
    assert_eq!(r["A.W"], Verdict::Passed);
    assert_eq!(r["A.X"], Verdict::Passed);
    assert_eq!(r["A.Y"], Verdict::Skipped);
    assert_eq!(r["A.Z"], Verdict::Failed);
    assert_eq!(r["B.X"], Verdict::Passed);
    assert_eq!(r.len(), 5);
}

#[test]
fn iscsi_test_cu_all() {
    if !have("iscsi-test-cu") {
        return skip("iscsi-test-cu (libiscsi-bin) is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("scratch.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let exp = Export::start(&img, &[]);
    let out = Command::new("timeout")
        .args(["900", "iscsi-test-cu", "-v", "-d", "-t", "ALL"])
        .arg(exp.url(0))
        .output()
        .expect("run iscsi-test-cu");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if let Ok(p) = std::env::var("ISBOOT_CONFORMANCE_OUT") {
        std::fs::write(p, &text).unwrap();
    }
    let res = parse(&text);
    let count = |v| res.values().filter(|x| **x == v).count();
    let (p, f, s) = (
        count(Verdict::Passed),
        count(Verdict::Failed),
        count(Verdict::Skipped),
    );
    eprintln!(
        "iscsi-test-cu against isboot: {p} passed, {f} failed, {s} skipped of {}",
        res.len()
    );
    for (name, v) in &res {
        if *v == Verdict::Failed {
            eprintln!("  FAILED {name}");
        }
    }
    let expected = include_str!("conformance/expected-pass.txt");
    let mut regressions = Vec::new();
    for name in expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if res.get(name) != Some(&Verdict::Passed) {
            regressions.push(format!("{name}: {:?}", res.get(name)));
        }
    }
    let listed: std::collections::HashSet<&str> = expected.lines().map(str::trim).collect();
    for (name, v) in &res {
        if *v == Verdict::Passed && !listed.contains(name.as_str()) {
            eprintln!("  newly passing (add to expected-pass.txt): {name}");
        }
    }
    assert!(
        res.len() >= 200,
        "iscsi-test-cu ran only {} tests:\n{text}",
        res.len()
    );
    assert!(
        regressions.is_empty(),
        "tests that must pass did not:\n{}\n\nisboot log:\n{}",
        regressions.join("\n"),
        exp.log_text()
    );
}

/// Run one iscsi-test-cu selection against `urls` and return its verdicts.
fn run_selection(selection: &str, urls: &[String]) -> BTreeMap<String, Verdict> {
    let out = Command::new("timeout")
        .args(["300", "iscsi-test-cu", "-v", "-d", "-t", selection])
        .args(urls)
        .output()
        .expect("run iscsi-test-cu");
    parse(
        &(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr)),
    )
}

/// The suites the ALL run skips for want of a second path or a write-protected unit.
#[test]
fn iscsi_test_cu_multipath_and_read_only() {
    if !have("iscsi-test-cu") {
        return skip("iscsi-test-cu (libiscsi-bin) is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mp.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let exp = Export::start(&img, &[]);
    // Two sessions to the same LUN: libiscsi's multipath tests.
    let mp = run_selection("ALL.MultipathIO", &[exp.url(0), exp.url(0)]);
    for t in [
        "MultipathIO.Simple",
        "MultipathIO.CompareAndWrite",
        "MultipathIO.CompareAndWriteAsync",
    ] {
        assert_eq!(mp.get(t), Some(&Verdict::Passed), "{t}: {mp:?}");
    }
    drop(exp);
    let ro = Export::start(&img, &["--read-only"]);
    let r = run_selection("SCSI.ReadOnly", &[ro.url(0)]);
    assert_eq!(
        r.get("ReadOnly.ReadOnlySBC"),
        Some(&Verdict::Passed),
        "{r:?}"
    );
}
