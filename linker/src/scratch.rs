//! Scratch directories under the system's temp dir, for the tests (and
//! anything else that needs a throw-away directory): `<stem>-<pid>-<n>`.
//! Making one removes the directories of the same stem whose process is
//! gone, so repeated test runs do not pile up in `/tmp`, while a failed
//! run's directory stays for a look until the next run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A new, empty directory `<temp>/<stem>-<pid>-<n>`; first the stale ones
/// of `stem` are removed ([`sweep`]).
pub fn dir(stem: &str) -> std::io::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let temp = std::env::temp_dir();
    sweep(&temp, stem);
    let dir = temp.join(format!(
        "{stem}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Remove the directories in `temp` named `<stem>-<pid>...` whose process
/// no longer runs. Best effort: what cannot be read or removed stays.
pub fn sweep(temp: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner(n, stem)) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The PID in `<stem>-<pid>` or `<stem>-<pid>-<anything>`; `None` for any
/// other name (another stem that merely starts the same way included).
fn owner(name: &str, stem: &str) -> Option<u32> {
    let rest = name.strip_prefix(stem)?.strip_prefix('-')?;
    let pid = rest.split('-').next()?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owner_reads_the_pid_of_this_stem_only() {
        assert_eq!(owner("mqlink-e2e-kill-123-0", "mqlink-e2e-kill"), Some(123));
        assert_eq!(owner("mqlink-e2e-kill-123", "mqlink-e2e-kill"), Some(123));
        assert_eq!(
            owner("mqlink-e2e-kill-origin-123-0", "mqlink-e2e-kill"),
            None
        );
        assert_eq!(owner("mqlink-e2e-killer-123-0", "mqlink-e2e-kill"), None);
        assert_eq!(owner("mqlink-e2e-kill-", "mqlink-e2e-kill"), None);
    }

    #[test]
    fn a_new_directory_sweeps_those_of_dead_processes_only() {
        let temp = dir("mqlink-scratch-test").unwrap();
        // PIDs above the kernel's limit (4,194,304) never run.
        let dead = temp.join("stem-4999999-0");
        let alive = temp.join(format!("stem-{}-0", std::process::id()));
        let other = temp.join("stemmed-4999999-0");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("inside")).unwrap();
        }
        sweep(&temp, "stem");
        assert!(!dead.exists(), "a dead process's directory is removed");
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(&temp).unwrap();
    }
}
