//! Programs the tests drive (Chromium's driver, Prometheus, HAProxy…):
//! found on PATH or skipped with a printed reason, killed when dropped.

use std::process::{Child, Command, Stdio};

/// A program on PATH (it answers `--version`), or `None` with the reason
/// printed.
pub fn tool(name: &str, why: &str) -> Option<std::path::PathBuf> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIPPED: `{name}` is not installed ({why}); `.ci/run` installs it");
    }
    found.then(|| name.into())
}

/// Kills and reaps a child process when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago (for programs that need a
/// port number up front).
pub async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}
