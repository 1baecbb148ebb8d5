//! SPMD start-up: every rank runs the same program, started by `mpirun` or `srun`; rank 0
//! is the head.

use std::fmt;

use super::vars;

/// Who started the SPMD ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpmdKind {
    /// An MPI launcher (`mpirun`/`mpiexec` of Open MPI, MPICH or a PMIx-based one).
    Mpi,
    /// A Slurm job step (`srun`).
    Slurm,
}

impl fmt::Display for SpmdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpmdKind::Mpi => "mpi",
            SpmdKind::Slurm => "slurm",
        })
    }
}

/// This process's place among the ranks of an SPMD launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpmdRank {
    /// This process's rank, `0..size`; rank 0 is the head, rank `r` is worker `r`.
    pub rank: u32,
    /// Number of ranks.
    pub size: u32,
    /// Who started the ranks.
    pub kind: SpmdKind,
}

impl SpmdRank {
    /// Whether this rank is the head (rank 0).
    pub fn is_head(&self) -> bool {
        self.rank == 0
    }

    /// [`spmd_rank`] with the variables looked up by `lookup`.
    ///
    /// ```
    /// use dagger_net::launch::{SpmdKind, SpmdRank};
    /// let vars = |name: &str| match name {
    ///     "OMPI_COMM_WORLD_RANK" => Some("2".to_string()),
    ///     "OMPI_COMM_WORLD_SIZE" => Some("3".to_string()),
    ///     _ => None,
    /// };
    /// let rank = SpmdRank::from_vars(vars).unwrap();
    /// assert_eq!((rank.rank, rank.size, rank.kind), (2, 3, SpmdKind::Mpi));
    /// ```
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Option<SpmdRank> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get(vars::ROLE).is_some() {
            return None;
        }
        let in_slurm_step = get("SLURM_STEP_ID").is_some();
        let mpi_size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .into_iter()
            .find_map(|v| Some((v, get(v)?)));
        let candidates = [
            (
                "OMPI_COMM_WORLD_RANK",
                Some("OMPI_COMM_WORLD_SIZE"),
                SpmdKind::Mpi,
            ),
            ("PMI_RANK", Some("PMI_SIZE"), SpmdKind::Mpi),
            (
                "PMIX_RANK",
                mpi_size.as_ref().map(|(v, _)| *v),
                SpmdKind::Mpi,
            ),
            (
                "SLURM_PROCID",
                in_slurm_step.then_some("SLURM_NTASKS"),
                SpmdKind::Slurm,
            ),
        ];
        for (rank_var, size_var, kind) in candidates {
            let (Some(rank), Some(size_var)) = (get(rank_var), size_var) else {
                continue;
            };
            let size = get(size_var);
            let parsed = (rank.parse::<u32>(), size.as_deref().map(str::parse::<u32>));
            match parsed {
                (Ok(rank), Some(Ok(size))) if rank < size => {
                    return Some(SpmdRank { rank, size, kind })
                }
                _ => log::warn!(
                    "ignoring {rank_var}={rank:?} with {size_var}={size:?}: not a rank below a size"
                ),
            }
        }
        None
    }
}

/// This process's rank when it was started as one of several ranks of the same program by
/// `mpirun`/`mpiexec` (`OMPI_COMM_WORLD_RANK`/`_SIZE`, `PMI_RANK`/`PMI_SIZE`, `PMIX_RANK`)
/// or inside an `srun` job step (`SLURM_PROCID`/`SLURM_NTASKS`, only when `SLURM_STEP_ID` is
/// set: a batch script is not a step). `None` otherwise, and in processes a launcher started
/// (`DAGGER_ROLE` set: an `srun` worker is not an SPMD rank).
///
/// The secret of an SPMD run comes from `DAGGER_SECRET` or `DAGGER_SECRET_FILE`, which must
/// reach every rank (`mpirun -x DAGGER_SECRET`; `srun` passes the environment on).
pub fn spmd_rank() -> Option<SpmdRank> {
    SpmdRank::from_vars(|name| std::env::var(name).ok())
}
