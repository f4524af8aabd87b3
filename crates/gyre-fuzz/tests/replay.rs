//! Replays every saved fuzz input (`fuzz/corpus/<target>/`, the minimized
//! corpora, and `fuzz/regressions/<target>/`, inputs that once crashed)
//! through the target bodies on the stable toolchain. A regression file that
//! panics again fails this test naming the file.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn replay(kind: &str) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, body) in gyre_fuzz::TARGETS {
        let dir = root().join(kind).join(name);
        let inputs = files(&dir);
        if kind == "corpus" {
            assert!(!inputs.is_empty(), "{} holds no saved corpus", dir.display());
        }
        for f in inputs {
            total += 1;
            let data = std::fs::read(&f).expect("read input");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(f.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} inputs failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("replayed {total} {kind} inputs");
}

#[test]
fn corpora_replay_clean() {
    replay("corpus");
}

#[test]
fn regressions_stay_fixed() {
    replay("regressions");
}

#[test]
fn every_target_has_a_fuzz_binary() {
    for (name, _) in gyre_fuzz::TARGETS {
        let p = root().join("fuzz_targets").join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(src.contains(&format!("gyre_fuzz::{name}(")), "{} calls gyre_fuzz::{name}", p.display());
    }
}
