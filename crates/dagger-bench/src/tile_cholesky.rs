//! Tiled Cholesky factorisation written with a data-dependency region: faer tile kernels
//! (POTRF, TRSM, SYRK, GEMM) registered with `#[dagger::task]`, so that a region may run them
//! in worker processes. Shared by `dagger-bench cholesky` and the datadeps tests (which include
//! this file by path).
#![allow(dead_code)]

use dagger::{spawn_datadeps_with, DatadepsOptions, In, InOut, TaskError};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use serde::{Deserialize, Serialize};

/// A square matrix stored column-major (a tile, or a whole matrix).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tile(pub Vec<f64>);

impl Tile {
    /// Rows (= columns).
    pub fn n(&self) -> usize {
        (self.0.len() as f64).sqrt() as usize
    }

    /// Element (i, j).
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.0[j * self.n() + i]
    }

    fn r(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(&self.0, self.n(), self.n())
    }

    fn w(&mut self) -> MatMut<'_, f64> {
        let n = self.n();
        MatMut::from_column_major_slice_mut(&mut self.0, n, n)
    }
}

/// A := L with L L^T = A (lower triangle), with faer's parallelism `par`.
pub fn potrf_par(a: &mut Tile, par: Par) {
    let n = a.n();
    let req = faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
        n,
        par,
        Default::default(),
    );
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    faer::linalg::cholesky::llt::factor::cholesky_in_place(
        a.w(),
        Default::default(),
        par,
        faer::dyn_stack::MemStack::new(&mut mem),
        Default::default(),
    )
    .expect("the matrix is positive definite");
}

/// A := L with L L^T = A (lower triangle).
#[dagger::task]
pub fn potrf(a: &mut Tile) {
    potrf_par(a, Par::Seq)
}

/// A := A L^-T
#[dagger::task]
pub fn trsm(l: &Tile, a: &mut Tile) {
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(
        l.r(),
        a.w().transpose_mut(),
        Par::Seq,
    );
}

/// C := C - A A^T (lower triangle)
#[dagger::task]
pub fn syrk(a: &Tile, c: &mut Tile) {
    faer::linalg::matmul::triangular::matmul(
        c.w(),
        BlockStructure::TriangularLower,
        Accum::Add,
        a.r(),
        BlockStructure::Rectangular,
        a.r().transpose(),
        BlockStructure::Rectangular,
        -1.0,
        Par::Seq,
    );
}

/// C := C - A B^T
#[dagger::task]
pub fn gemm(a: &Tile, b: &Tile, c: &mut Tile) {
    faer::linalg::matmul::matmul(c.w(), Accum::Add, a.r(), b.r().transpose(), -1.0, Par::Seq);
}

/// A deterministic symmetric positive definite n x n matrix: B B^T / n + I.
pub fn spd(n: usize, par: Par) -> Tile {
    let mut s = 0x2545f4914f6cdd1du64;
    let b = faer::Mat::from_fn(n, n, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    });
    let mut a = Tile(vec![0.0; n * n]);
    for i in 0..n {
        a.0[i * n + i] = 1.0;
    }
    faer::linalg::matmul::matmul(
        a.w(),
        Accum::Add,
        b.as_ref(),
        b.as_ref().transpose(),
        1.0 / n as f64,
        par,
    );
    a
}

/// The lower tiles of `a` (tile (i, j) at `[i][j]`, j <= i), `nb` x `nb` each.
pub fn tiles(a: &Tile, nb: usize) -> Vec<Vec<Tile>> {
    let nt = a.n() / nb;
    (0..nt)
        .map(|i| {
            (0..=i)
                .map(|j| {
                    Tile(
                        (0..nb * nb)
                            .map(|e| a.at(i * nb + e % nb, j * nb + e / nb))
                            .collect(),
                    )
                })
                .collect()
        })
        .collect()
}

/// Factors the tiled matrix in place, one task per tile kernel call (in worker processes too,
/// when the context has them and the planner places tasks there).
pub fn factor(t: &mut [Vec<Tile>], opts: DatadepsOptions) -> Result<(), TaskError> {
    let nt = t.len();
    spawn_datadeps_with(opts, |dd| {
        let h: Vec<Vec<_>> = t
            .iter_mut()
            .map(|row| row.iter_mut().map(|m| dd.data(m)).collect())
            .collect();
        for k in 0..nt {
            dd.spawn_task(potrf, (InOut(h[k][k]),));
            for i in k + 1..nt {
                dd.spawn_task(trsm, (In(h[k][k]), InOut(h[i][k])));
            }
            for i in k + 1..nt {
                dd.spawn_task(syrk, (In(h[i][k]), InOut(h[i][i])));
                for j in k + 1..i {
                    dd.spawn_task(gemm, (In(h[i][k]), In(h[j][k]), InOut(h[i][j])));
                }
            }
        }
    })
}

/// Relative (Frobenius) difference of the tiled factor `t` from the factor `l` of the whole
/// matrix, over the lower triangle.
pub fn rel_error(t: &[Vec<Tile>], l: &Tile) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (i, row) in t.iter().enumerate() {
        for (j, m) in row.iter().enumerate() {
            let nb = m.n();
            for e in 0..nb * nb {
                let (gi, gj) = (i * nb + e % nb, j * nb + e / nb);
                if gi >= gj {
                    let want = l.at(gi, gj);
                    diff += (m.0[e] - want).powi(2);
                    norm += want * want;
                }
            }
        }
    }
    (diff / norm).sqrt()
}
