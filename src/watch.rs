//! Watching the config, policy and certificate files: a change reloads the
//! whole configuration, exactly as SIGHUP does.
//!
//! Directories are watched (editors and deploy tools replace files by
//! renaming), events are filtered to the files that matter and debounced, and
//! the watch list is refreshed after every successful reload.
//!
//! On `notify` directly, without a debouncer crate: any relevant path reloads
//! the whole configuration, so a debouncer's rename stitching buys nothing
//! over our 200 ms drain.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::app::Shared;
use crate::config::{self, Loaded};

/// The files and directories a configuration depends on.
#[derive(Debug, Default)]
struct WatchSet {
    files: HashSet<PathBuf>,
    policy_dir: Option<PathBuf>,
    dirs: HashSet<PathBuf>,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn watch_set(config_path: &Path, loaded: &Loaded) -> WatchSet {
    let mut set = WatchSet::default();
    let add_file = |p: PathBuf, set: &mut WatchSet| {
        let p = canonical(&p);
        if let Some(dir) = p.parent() {
            set.dirs.insert(dir.to_path_buf());
        }
        set.files.insert(p);
    };
    add_file(config_path.to_path_buf(), &mut set);
    for l in &loaded.config.listeners {
        if let Some(tls) = &l.get_ref().tls {
            for c in &tls.certs {
                add_file(loaded.resolve(&c.cert), &mut set);
                add_file(loaded.resolve(&c.key), &mut set);
            }
            if let Some(ca) = &tls.client_ca {
                add_file(loaded.resolve(ca), &mut set);
            }
        }
    }
    for p in &loaded.policies {
        // OpenAPI documents (their sibling `$ref` files are not watched).
        let dir = p.source.path.parent().unwrap_or(Path::new(""));
        for o in &p.file.openapi {
            add_file(dir.join(o.get_ref().document.get_ref()), &mut set);
        }
        for u in &p.file.upstream {
            if let Some(ca) = &u.get_ref().tls_ca {
                add_file(loaded.resolve(ca.get_ref()), &mut set);
            }
        }
    }
    let dir = canonical(&loaded.policy_dir);
    set.dirs.insert(dir.clone());
    set.policy_dir = Some(dir);
    set
}

impl WatchSet {
    fn relevant(&self, path: &Path) -> bool {
        if self.files.contains(path) {
            return true;
        }
        let in_policy_dir = self
            .policy_dir
            .as_deref()
            .is_some_and(|d| path.parent() == Some(d));
        in_policy_dir && path.extension().is_some_and(|e| e == "toml")
    }
}

/// Registers the watches now (so a change made right after start is seen),
/// then reloads on every relevant change until `stop` fires.
pub fn spawn(shared: Arc<Shared>, loaded: Loaded, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let config_path = loaded.source.path.clone();
    let set = Arc::new(ArcSwap::from_pointee(watch_set(&config_path, &loaded)));
    let (tx, rx) = mpsc::channel::<()>(1);
    let filter = set.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let current = filter.load();
        if event.paths.iter().any(|p| current.relevant(p)) {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch configuration files; reload with SIGHUP");
            return tokio::spawn(async {});
        }
    };
    let mut watching: HashSet<PathBuf> = HashSet::new();
    refresh(&mut watcher, &mut watching, &set.load());
    tokio::spawn(run(shared, config_path, set, rx, stop, watcher, watching))
}

async fn run(
    shared: Arc<Shared>,
    config_path: PathBuf,
    set: Arc<ArcSwap<WatchSet>>,
    mut rx: mpsc::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    mut watcher: notify::RecommendedWatcher,
    mut watching: HashSet<PathBuf>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            got = rx.recv() => if got.is_none() { break },
        }
        // Debounce: a deploy often writes several files at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        tracing::info!("configuration files changed; reloading");
        if shared.reload().await.is_ok() {
            let path = config_path.clone();
            if let Ok(Ok(loaded)) = tokio::task::spawn_blocking(move || config::load(&path)).await {
                set.store(Arc::new(watch_set(&config_path, &loaded)));
                refresh(&mut watcher, &mut watching, &set.load());
            }
        }
    }
}

fn refresh(
    watcher: &mut notify::RecommendedWatcher,
    watching: &mut HashSet<PathBuf>,
    set: &WatchSet,
) {
    for dir in watching.difference(&set.dirs).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&dir);
        watching.remove(&dir);
    }
    for dir in &set.dirs {
        if watching.contains(dir) {
            continue;
        }
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watching.insert(dir.clone());
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
}
