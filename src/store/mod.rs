//! What must outlive the process: the known users and the derivation state, in the state
//! directory (`embedded`: one redb file). Files holding user data are private: the directory is
//! 0700 and every file 0600, whoever's umask.
pub mod cluster;
pub mod embedded;

pub use embedded::{StateStore, StoreStats, StoreUsers};

use anyhow::{Context, Result};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates the state directory (0700), or tightens an existing one of ours that others can read.
pub fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        return Ok(());
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read state directory {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("state directory {} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => tracing::info!(dir = %dir.display(), "state directory was readable by others; now 0700"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "state directory is readable by others and cannot be made private")
            }
        }
    }
    Ok(())
}

/// Makes sure a file exists and is 0600 (created so, or tightened), before a database opens it.
pub fn private_file(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    Ok(())
}

/// Writes a private (0600) file atomically: a temporary file beside it, synced, renamed over it,
/// so a crash leaves the old file or the new one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Warns when a file holding a secret (or a config naming one) can be read by other users.
pub fn warn_if_readable_by_others(path: &Path, what: &str) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o004 != 0 => {
            tracing::warn!(file = %path.display(), "{what} is readable by every local user; chmod o-r it");
            true
        }
        _ => false,
    }
}

/// A pipeline and the store behind it.
pub struct Opened {
    pub pipeline: crate::pipeline::Pipeline,
    pub store: StateStore,
    /// Whether the store is the user's state directory (else a scratch one, deleted at the end).
    pub persistent: bool,
    /// Keep it while the store is used: the scratch directory goes with it.
    pub scratch: Option<Scratch>,
    /// Cluster mode: the connection to the cluster the pipeline decides through.
    pub cluster: Option<std::sync::Arc<cluster::Cluster>>,
}

/// A scratch state directory, removed when dropped.
pub struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pipeline for a configuration, with its known users read from a store (a bounded cache in
/// memory, the rest on disk): the state directory's (with its saved derivation state restored),
/// or without one a scratch directory under the system's temporary directory, removed at the end
/// (so that even a replay of ten million users needs little memory).
pub fn open_pipeline(cfg: &crate::config::Config, state: Option<&Path>) -> Result<Opened> {
    use crate::pipeline::Pipeline;
    let (dir, scratch) = match state {
        Some(d) => (d.to_path_buf(), None),
        None => {
            let tag = crate::sink::firebase::random_bytes(8)?.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let d = std::env::temp_dir().join(format!("siptap-replay-{}-{tag}", std::process::id()));
            (d.clone(), Some(Scratch(d)))
        }
    };
    let mut store = StateStore::open(&dir, cfg.limits.store_cache_mib << 20)?;
    store.set_journal_max_bytes(cfg.limits.store_journal_mib << 20);
    let users = store.users(cfg.limits.known_users_cache);
    let cluster = match &cfg.cluster {
        Some(c) => {
            let c = cluster::Cluster::connect(c, &dir)?;
            store.adopt_fingerprint_key(c.fingerprint_key)?;
            Some(c)
        }
        None => None,
    };
    let users: Box<dyn crate::state::users::KnownUsers> = match &cluster {
        Some(c) => Box::new(cluster::ClusterUsers::new(c.clone(), Box::new(users))),
        None => Box::new(users),
    };
    let mut pipeline = Pipeline::new(cfg, users, store.fingerprint_key());
    if let Some(c) = &cluster {
        pipeline.tracker().registrations.set_shared(Box::new(cluster::ClusterRegistry::new(c.clone())));
    }
    // nothing of the derivation state is saved without a state directory: do not track changes
    pipeline.tracker().set_tracking(state.is_some());
    if state.is_some() {
        store.load(pipeline.tracker()).with_context(|| {
            format!(
                "cannot read the saved state in {}; if it is damaged, move it aside (siptap then starts with an empty state)",
                store.path().display()
            )
        })?;
    }
    Ok(Opened { pipeline, store, persistent: state.is_some(), scratch, cluster })
}
