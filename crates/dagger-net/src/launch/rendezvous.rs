//! The SPMD rendezvous: rank 0 writes its address to a file, the other ranks wait for it.
//!
//! The file is written whole (a temporary file renamed into place), so readers never see a
//! partial one:
//!
//! ```text
//! dagger-rendezvous 1
//! head 10.0.0.5:41234
//! tls-fingerprint 3fa1...
//! ```
//!
//! Readers refuse a file another user owns. The default path lies under the system's
//! temporary directory, which only ranks on the same machine share; ranks on several
//! machines need `DAGGER_RENDEZVOUS` on a shared file system.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{sys, vars, LaunchError};

const MAGIC: &str = "dagger-rendezvous 1";

/// The rendezvous file of this SPMD run: `DAGGER_RENDEZVOUS` if set, else a name derived
/// from the job id that every rank sees (`OMPI_MCA_ess_base_jobid` or
/// `OMPI_MCA_orte_ess_jobid` of Open MPI, `PMIX_NAMESPACE`, or `SLURM_JOB_ID` with
/// `SLURM_STEP_ID`) in the system's temporary directory.
pub fn rendezvous_path() -> Result<PathBuf, LaunchError> {
    rendezvous_path_with(|name| std::env::var(name).ok())
}

/// [`rendezvous_path`] with the variables looked up by `lookup`.
///
/// ```
/// use dagger_net::launch::rendezvous_path_with;
/// let vars = |name: &str| match name {
///     "SLURM_JOB_ID" => Some("42".to_string()),
///     "SLURM_STEP_ID" => Some("3".to_string()),
///     _ => None,
/// };
/// let path = rendezvous_path_with(vars).unwrap();
/// assert!(path.to_string_lossy().ends_with("slurm-42.3"));
/// ```
pub fn rendezvous_path_with(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, LaunchError> {
    let get = |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(path) = get(vars::RENDEZVOUS) {
        return Ok(PathBuf::from(path));
    }
    let job = if let Some(id) =
        get("OMPI_MCA_ess_base_jobid").or_else(|| get("OMPI_MCA_orte_ess_jobid"))
    {
        format!("ompi-{id}")
    } else if let Some(ns) = get("PMIX_NAMESPACE") {
        format!("pmix-{ns}")
    } else if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID")) {
        format!("slurm-{job}.{step}")
    } else {
        return Err(LaunchError::Config(
            "no job id to name the SPMD rendezvous file after (none of \
             OMPI_MCA_ess_base_jobid, PMIX_NAMESPACE, SLURM_JOB_ID with SLURM_STEP_ID is set): \
             set DAGGER_RENDEZVOUS to a file path every rank can reach"
                .into(),
        ));
    };
    let job: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let user = sys::own_uid().map(|u| format!("{u}-")).unwrap_or_default();
    Ok(std::env::temp_dir().join(format!("dagger-rendezvous-{user}{job}")))
}

/// The head's published address: removes the rendezvous file when dropped.
#[derive(Debug)]
#[must_use = "dropping it removes the rendezvous file at once"]
pub struct HeadRendezvous {
    path: Option<PathBuf>,
}

impl HeadRendezvous {
    /// The file.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Leaves the file in place when dropped; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for HeadRendezvous {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn check_field(what: &str, value: &str) -> Result<(), LaunchError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(LaunchError::Config(format!(
            "bad {what} {value:?} for the rendezvous file"
        )))
    } else {
        Ok(())
    }
}

/// Publishes the head's address `addr` (`host:port`, reachable from the other ranks) and
/// TLS certificate fingerprint in `path`, replacing any older file whole. Keep the returned
/// guard until the workers have connected: dropping it removes the file.
pub fn publish_head(
    path: &Path,
    addr: &str,
    tls_fingerprint: Option<&str>,
) -> Result<HeadRendezvous, LaunchError> {
    check_field("head address", addr)?;
    if let Some(fp) = tls_fingerprint {
        check_field("TLS fingerprint", fp)?;
    }
    let io_err = |context: String| move |source| LaunchError::Io { context, source };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    let mut nonce = [0u8; 8];
    let _ = getrandom::getrandom(&mut nonce);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut contents = format!("{MAGIC}\nhead {addr}\n");
    if let Some(fp) = tls_fingerprint {
        contents.push_str(&format!("tls-fingerprint {fp}\n"));
    }
    let write = || -> io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!(
            "cannot write the rendezvous file {}",
            path.display()
        ))(e));
    }
    Ok(HeadRendezvous {
        path: Some(path.to_path_buf()),
    })
}

/// Reads a published rendezvous file: `Ok(None)` while there is none.
fn read(path: &Path) -> Result<Option<(String, Option<String>)>, LaunchError> {
    let bad = |reason: String| LaunchError::Rendezvous {
        path: path.to_path_buf(),
        reason,
    };
    let contents = match fs::read(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LaunchError::Io {
                context: format!("cannot read the rendezvous file {}", path.display()),
                source,
            })
        }
    };
    #[cfg(unix)]
    if let (Ok(meta), Some(uid)) = (fs::metadata(path), sys::own_uid()) {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != uid {
            return Err(bad(format!(
                "it belongs to user id {}, not to this user (id {uid}); remove it, or set \
                 DAGGER_RENDEZVOUS to another path",
                meta.uid()
            )));
        }
    }
    let text = String::from_utf8(contents).map_err(|_| bad("it is not text".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad(format!("it does not start with {MAGIC:?}")));
    }
    let (mut head, mut fingerprint) = (None, None);
    for line in lines {
        match line.split_once(' ') {
            Some(("head", v)) => head = Some(v.trim().to_string()),
            Some(("tls-fingerprint", v)) => fingerprint = Some(v.trim().to_string()),
            _ => {} // later versions may add lines
        }
    }
    match head {
        Some(head) if !head.is_empty() => Ok(Some((head, fingerprint))),
        _ => Err(bad("it names no head address".into())),
    }
}

/// Waits up to `timeout` for the head to [`publish_head`] in `path`; returns its address and
/// TLS certificate fingerprint.
pub fn wait_for_head(
    path: &Path,
    timeout: Duration,
) -> Result<(String, Option<String>), LaunchError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(found) = read(path)? {
            return Ok(found);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(LaunchError::RendezvousTimeout {
                path: path.to_path_buf(),
                waited: timeout,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
