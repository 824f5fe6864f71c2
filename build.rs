//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the
//! `migrations/` folders at compile time but only notices edits to files it
//! already knows. Also records the git commit for `gatehouse_build_info`.
// A build script is not the gateway: reading the build environment is its job.
#[allow(clippy::disallowed_methods)]
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_GIT_COMMIT");
    let commit = std::env::var("GATEHOUSE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=GATEHOUSE_GIT_COMMIT={commit}");
}
