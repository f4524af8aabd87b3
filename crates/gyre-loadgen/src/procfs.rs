//! Reading the server's memory and CPU from `/proc`.
//!
//! * Memory: `Pss:` of `/proc/<pid>/smaps_rollup` (kB), summed over every
//!   server process, so Nchan's master and worker — which share pages, such as
//!   the shared-memory zone — are counted once in proportion.
//! * CPU: `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`, clock ticks;
//!   the whole thread group), summed over the processes.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Parses the `Pss:` line of a `smaps_rollup` file; returns bytes.
pub fn parse_smaps_rollup_pss(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("Pss:")?;
        let mut it = rest.split_whitespace();
        let v: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(v * 1024),
            Some(_) => None,
        }
    })
}

/// Parses `utime + stime` (clock ticks) from the text of `/proc/<pid>/stat`.
/// The command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; utime is field 14, stime 15.
    let mut it = after.split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Parses the parent pid (field 4) from `/proc/<pid>/stat` text.
pub fn parse_stat_ppid(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Busy clock ticks of the whole host from the text of `/proc/stat` (the
/// aggregate `cpu` line: user, nice, system, irq, softirq and steal; guest time
/// is already inside user).
pub fn parse_host_busy_ticks(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    if v.len() < 8 {
        return None;
    }
    Some(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Busy ticks of the whole host.
pub fn host_busy_ticks() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_host_busy_ticks(&text).context("malformed /proc/stat")
}

/// Parses `/proc/<pid>/task/<tid>/schedstat`: (ns on CPU, ns waiting on a run queue).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Nanoseconds the threads of `pid` spent runnable but waiting for a CPU
/// (summed over its current threads): how much the host got in the way.
pub fn runq_wait_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(e) = e else { continue };
        if let Ok(t) = std::fs::read_to_string(e.path().join("schedstat"))
            && let Some((_, wait)) = parse_schedstat(&t)
        {
            total += wait;
        }
    }
    Ok(total)
}

/// Summed run-queue wait of `pids`, ns.
pub fn total_runq_wait_ns(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| runq_wait_ns(*p)).sum()
}

/// PSS in bytes of one process.
pub fn pss_bytes(pid: u32) -> Result<u64> {
    let p = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    parse_smaps_rollup_pss(&text).with_context(|| format!("no Pss line in {p}"))
}

/// CPU time (utime+stime) in clock ticks of one process.
pub fn cpu_ticks(pid: &str) -> Result<u64> {
    let p = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    parse_stat_cpu_ticks(&text).with_context(|| format!("malformed {p}"))
}

/// Summed PSS of `pids`, bytes.
pub fn total_pss(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| pss_bytes(*p)).sum()
}

/// Summed CPU ticks of `pids`.
pub fn total_cpu_ticks(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| cpu_ticks(&p.to_string())).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux USER_HZ, if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// Every pid under `proc_root` whose `comm` equals `name`, plus their
/// descendants whose `comm` also equals it (nginx master and workers).
pub fn pids_by_name(proc_root: &Path, name: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc_root).context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() == name {
            out.push(pid);
        }
    }
    out.sort_unstable();
    if out.is_empty() {
        bail!("no process named {name:?}");
    }
    Ok(out)
}

/// The pids of the direct children of `parent` (for `--server-pid` of an
/// nginx master: its workers are added).
pub fn children_of(proc_root: &Path, parent: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            (parse_stat_ppid(&stat)? == parent).then_some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0c0a1e000-7ffd3b5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:                6400 kB
Pss:                3012 kB
Pss_Anon:           2048 kB
Pss_File:            964 kB
Shared_Clean:       1234 kB
";

    #[test]
    fn pss_is_parsed_in_bytes() {
        assert_eq!(parse_smaps_rollup_pss(ROLLUP), Some(3012 * 1024));
        assert_eq!(parse_smaps_rollup_pss("Rss: 1 kB\n"), None);
        assert_eq!(parse_smaps_rollup_pss("Pss: 12 MB\n"), None);
    }

    #[test]
    fn stat_cpu_handles_odd_command_names() {
        let stat = "1234 (gyre (worker) 1) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 37 0 0 20 0 3 0 100 1000000 500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(287));
        assert_eq!(parse_stat_ppid(stat), Some(1));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn host_busy_sums_the_busy_columns() {
        let stat = "cpu  100 20 30 400 5 6 7 8 0 0\ncpu0 50 10 15 200 2 3 3 4 0 0\nintr 1 2\n";
        assert_eq!(parse_host_busy_ticks(stat), Some(100 + 20 + 30 + 6 + 7 + 8));
        assert_eq!(parse_host_busy_ticks("cpu  1 2 3\n"), None);
        assert_eq!(parse_host_busy_ticks("intr 1\n"), None);
        assert!(host_busy_ticks().is_ok());
    }

    #[test]
    fn schedstat_fields() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("123"), None);
        runq_wait_ns(std::process::id()).unwrap();
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(pss_bytes(me).unwrap() > 0);
        cpu_ticks("self").unwrap();
        assert!(clock_ticks_per_sec() > 0);
    }

    #[test]
    fn finds_processes_by_name_in_a_fake_proc() {
        let dir = std::env::temp_dir().join(format!("lg-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (pid, comm, ppid) in [(10, "nginx", 1), (11, "nginx", 10), (12, "bash", 1)] {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} 0 0 0 0 0 0 0 0 0 5 6 0 0")).unwrap();
        }
        std::fs::create_dir_all(dir.join("self")).unwrap();
        assert_eq!(pids_by_name(&dir, "nginx").unwrap(), vec![10, 11]);
        assert!(pids_by_name(&dir, "gyre").is_err());
        assert_eq!(children_of(&dir, 10), vec![11]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
