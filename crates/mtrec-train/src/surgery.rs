//! Gradient surgery on the shared (BERT) parameters, applied to globally averaged per-task
//! gradients (flat vectors), identically on every rank.
//!
//! - [`SurgeryMode::Mtrec`] (Bi et al. 2022, `paper/MTREC.md` "Gradient surgery"): with
//!   `g_aux = lambda (g_category + g_ner)`, if `g_main . g_aux < 0` then
//!   `g_aux <- g_aux - (g_main . g_aux / ||g_main||^2) g_main`; the update is `g_main + g_aux`, and
//!   `g_main` itself is never changed.
//! - [`SurgeryMode::Pcgrad`] (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1):
//!   every task gradient `g_i` is projected, in random order, onto the normal plane of every
//!   other *original* task gradient `g_j` it conflicts with; the update is the sum.
//! - [`SurgeryMode::None`]: plain sum.
//!
//! The conflict test and the projection run on the device; only [`SurgeryStats`] are read on the
//! host, and only at log steps.
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How the auxiliary gradients are combined with the main one on the shared parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SurgeryMode {
    /// The paper: project `g_aux` off `g_main` when they conflict.
    Mtrec,
    /// PCGrad: every task against every other, in random order.
    Pcgrad,
    /// Plain sum of the task gradients.
    None,
}

/// Device-side statistics of one surgery, read at log steps.
#[derive(Debug)]
pub struct SurgeryStats {
    /// Cosine of `g_main` and `g_aux` before surgery (scalar).
    pub cosine: Tensor,
    /// 1.0 when they conflicted (`g_main . g_aux < 0`), else 0.0 (scalar).
    pub conflict: Tensor,
}

/// Guards the division by `||g||^2` against an all-zero gradient.
const EPS: f64 = 1e-20;

/// `g_aux` projected onto the normal plane of `g_main` if they conflict, else unchanged.
///
/// # Shapes
/// `g_main [S]`, `g_aux [S]` -> `[S]`.
pub fn project_on_conflict(g_main: &Tensor, g_aux: &Tensor) -> Tensor {
    g_aux - g_main * projection_coefficient(&g_main.dot(g_aux), &g_main.dot(g_main))
}

/// `c` of the projection `g_aux - c g_main`: `g_main . g_aux / ||g_main||^2` when the two conflict
/// (`dot < 0`), else 0.
fn projection_coefficient(dot: &Tensor, main_sq: &Tensor) -> Tensor {
    (dot / main_sq.clamp_min(EPS)) * dot.lt(0.0).to_kind(dot.kind())
}

/// The inner products of `g_main` and `g_aux` that the conflict test, the MTRec projection and
/// the statistics all need, each computed once (one pass over the shared gradients).
#[derive(Debug)]
pub struct Alignment {
    dot: Tensor,
    main_sq: Tensor,
    aux_sq: Tensor,
}

impl Alignment {
    /// # Shapes
    /// `g_main [S]`, `g_aux [S]`.
    pub fn new(g_main: &Tensor, g_aux: &Tensor) -> Self {
        Alignment { dot: g_main.dot(g_aux), main_sq: g_main.dot(g_main), aux_sq: g_aux.dot(g_aux) }
    }

    /// Statistics of `g_main` against `g_aux` (the sum of the auxiliary gradients), for any mode.
    pub fn stats(&self) -> SurgeryStats {
        let norms = (&self.main_sq * &self.aux_sq).sqrt();
        SurgeryStats {
            cosine: &self.dot / norms.clamp_min(EPS),
            conflict: self.dot.lt(0.0).to_kind(Kind::Float),
        }
    }
}

/// MTRec surgery in place: `update`, holding `g_main + g_aux`, becomes `g_main + g_aux'` with
/// `g_aux' = g_aux - (g_main . g_aux / ||g_main||^2) g_main` when `g_main . g_aux < 0`.
///
/// # Shapes
/// `update [S]`, `g_main [S]`.
pub fn apply_mtrec(update: &mut Tensor, g_main: &Tensor, alignment: &Alignment) {
    let _ = update.addcmul_(g_main, &-projection_coefficient(&alignment.dot, &alignment.main_sq));
}

/// PCGrad over any number of task gradients; `rng` draws the order in which each task visits
/// the others (seeded identically on every rank).
pub fn pcgrad(tasks: &[Tensor], rng: &mut impl rand::Rng) -> Tensor {
    let mut total = tasks[0].zeros_like();
    for (i, g_i) in tasks.iter().enumerate() {
        let mut others: Vec<usize> = (0..tasks.len()).filter(|&j| j != i).collect();
        others.shuffle(rng);
        let mut projected = g_i.shallow_clone();
        for j in others {
            projected = project_on_conflict(&tasks[j], &projected);
        }
        total += projected;
    }
    total
}

/// The update of one step, and what the logs report about it.
#[derive(Debug)]
pub struct Combined {
    /// `[P]` the sum of the task gradients, with the shared slice after surgery.
    pub update: Tensor,
    /// Statistics of `g_main` against `g_aux` (only with an auxiliary task).
    pub stats: Option<SurgeryStats>,
    /// `||g_aux||` over all parameters (only with an auxiliary task).
    pub aux_norm: Option<Tensor>,
}

/// Combines the averaged task gradients (flat `[P]`, the shared parameters in `[0, shared)`)
/// into the update: surgery per `mode` on the shared slice; on the task-specific rest the sum,
/// where each head's parameters hold only its own task's gradient. `aux` holds one gradient per
/// auxiliary objective (one, `lambda (g_category + g_ner)`, except for PCGrad, which needs each
/// task apart); empty = main task only, the update is `g_main`. `seed` draws PCGrad's order.
pub fn combine(mode: SurgeryMode, g_main: &Tensor, aux: &[Tensor], shared: i64, seed: u64) -> Combined {
    let Some(g_aux) = aux.iter().map(Tensor::shallow_clone).reduce(|a, b| a + b) else {
        return Combined { update: g_main.shallow_clone(), stats: None, aux_norm: None };
    };
    let main_shared = g_main.narrow(0, 0, shared);
    let alignment = Alignment::new(&main_shared, &g_aux.narrow(0, 0, shared));
    let update = g_main + &g_aux;
    match mode {
        SurgeryMode::Mtrec => apply_mtrec(&mut update.narrow(0, 0, shared), &main_shared, &alignment),
        SurgeryMode::Pcgrad => {
            let mut tasks = vec![main_shared];
            tasks.extend(aux.iter().map(|g| g.narrow(0, 0, shared)));
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            update.narrow(0, 0, shared).copy_(&pcgrad(&tasks, &mut rng));
        }
        SurgeryMode::None => {}
    }
    Combined { update, stats: Some(alignment.stats()), aux_norm: Some(g_aux.norm()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTRec surgery on vectors that are all shared parameters: `g_main + g_aux'`.
    fn mtrec(g_main: &Tensor, g_aux: &Tensor) -> Tensor {
        combine(SurgeryMode::Mtrec, g_main, &[g_aux.shallow_clone()], g_main.numel() as i64, 0).update
    }

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }
    fn v(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t).unwrap()
    }

    #[test]
    fn no_conflict_means_no_projection() {
        let (g_main, g_aux) = (t(&[1.0, 0.0]), t(&[0.5, 2.0]));
        let (g, stats) = (mtrec(&g_main, &g_aux), Alignment::new(&g_main, &g_aux).stats());
        assert_eq!(v(&g), vec![1.5, 2.0]);
        assert_eq!(stats.conflict.double_value(&[]), 0.0);
    }

    #[test]
    fn conflict_projects_aux_onto_the_normal_plane_of_main() {
        let g_main = t(&[2.0, 0.0, 1.0]);
        let g_aux = t(&[-3.0, 1.0, 0.5]);
        let projected = project_on_conflict(&g_main, &g_aux);
        // dot = -6 + 0.5 = -5.5, ||g_main||^2 = 5: g_aux + 1.1 g_main = [-0.8, 1, 1.6].
        let expected = [-0.8, 1.0, 1.6];
        for (a, b) in v(&projected).iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!(
            g_main.dot(&projected).double_value(&[]).abs() < 1e-12,
            "result must be orthogonal to g_main"
        );
        let (g, stats) = (mtrec(&g_main, &g_aux), Alignment::new(&g_main, &g_aux).stats());
        assert_eq!(stats.conflict.double_value(&[]), 1.0);
        assert!(stats.cosine.double_value(&[]) < 0.0);
        // g_main itself is unchanged: g - g_main is exactly the projected auxiliary gradient.
        assert!(((&g - &g_main) - &projected).abs().max().double_value(&[]) < 1e-12);
    }

    /// Every mode through [`combine`], on a flat layout of 3 shared and 2 task-specific values
    /// where the tasks conflict in both parts: surgery touches the shared part only.
    #[test]
    fn every_mode_combines_the_shared_part_only() {
        let g_main = t(&[2.0, 0.0, 1.0, 1.0, 0.0]);
        let g_aux = t(&[-3.0, 1.0, 0.5, -4.0, 3.0]);
        let plain_sum = [-1.0, 1.0, 1.5, -3.0, 3.0];
        let close = |got: &Tensor, want: &[f64]| {
            let got = v(got);
            assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{got:?} vs {want:?}");
        };

        // Main task only: the update is g_main, and nothing is reported.
        let main_only = combine(SurgeryMode::Mtrec, &g_main, &[], 3, 0);
        close(&main_only.update, &v(&g_main));
        assert!(main_only.stats.is_none() && main_only.aux_norm.is_none());

        // None: the plain sum, although the shared parts conflict.
        let none = combine(SurgeryMode::None, &g_main, &[g_aux.shallow_clone()], 3, 0);
        close(&none.update, &plain_sum);
        assert_eq!(none.stats.unwrap().conflict.double_value(&[]), 1.0);
        assert!((none.aux_norm.unwrap().double_value(&[]) - g_aux.norm().double_value(&[])).abs() < 1e-12);

        // MTRec: g_main + the projected g_aux on the shared part (hand-computed above:
        // [-0.8, 1, 1.6]), the plain sum on the rest.
        let mtrec = combine(SurgeryMode::Mtrec, &g_main, &[g_aux.shallow_clone()], 3, 0);
        close(&mtrec.update, &[1.2, 1.0, 2.6, -3.0, 3.0]);

        // PCGrad with the auxiliary tasks apart: PCGrad of the three on the shared part.
        let (g_cat, g_ner) = (t(&[-1.0, 0.5, 0.0, -4.0, 0.0]), t(&[-2.0, 0.5, 0.5, 0.0, 3.0]));
        let pc = combine(SurgeryMode::Pcgrad, &g_main, &[g_cat.shallow_clone(), g_ner.shallow_clone()], 3, 5);
        let shared = |g: &Tensor| v(&g.narrow(0, 0, 3));
        let expected =
            pcgrad_reference(&[shared(&g_main), shared(&g_cat), shared(&g_ner)], &drawn_orders(5, 3));
        close(&pc.update.narrow(0, 0, 3), &expected);
        close(&pc.update.narrow(0, 3, 2), &plain_sum[3..]);
        assert!(expected.iter().zip(&plain_sum).any(|(a, b)| (a - b).abs() > 1e-3), "PCGrad projected");
    }

    #[test]
    fn zero_main_gradient_does_not_produce_nan() {
        let g = mtrec(&t(&[0.0, 0.0]), &t(&[1.0, -1.0]));
        assert_eq!(v(&g), vec![1.0, -1.0]);
    }

    /// PCGrad as published (Yu et al. 2020, Algorithm 1), written independently with plain
    /// vectors: g_i^PC <- g_i; for each j != i in random order: if g_i^PC . g_j < 0,
    /// g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j.
    fn pcgrad_reference(tasks: &[Vec<f64>], orders: &[Vec<usize>]) -> Vec<f64> {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut total = vec![0.0; tasks[0].len()];
        for (i, g_i) in tasks.iter().enumerate() {
            let mut pc = g_i.clone();
            for &j in &orders[i] {
                let d = dot(&pc, &tasks[j]);
                if d < 0.0 {
                    let c = d / dot(&tasks[j], &tasks[j]);
                    pc.iter_mut().zip(&tasks[j]).for_each(|(p, g)| *p -= c * g);
                }
            }
            total.iter_mut().zip(&pc).for_each(|(t, p)| *t += p);
        }
        total
    }

    /// The orders in which each of `n` tasks visits the others, as the seeded implementation
    /// draws them (the randomness is shared; the projections are not).
    fn drawn_orders(seed: u64, n: usize) -> Vec<Vec<usize>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                order.shuffle(&mut rng);
                order
            })
            .collect()
    }

    #[test]
    fn pcgrad_equals_the_published_algorithm() {
        let tasks = vec![vec![1.0, 2.0, -1.0], vec![-2.0, 0.5, 1.0], vec![0.5, -3.0, 0.2]];
        let tensors: Vec<Tensor> = tasks.iter().map(|g| t(g)).collect();
        let ours = pcgrad(&tensors, &mut rand_chacha::ChaCha8Rng::seed_from_u64(11));
        let reference = pcgrad_reference(&tasks, &drawn_orders(11, 3));
        for (a, b) in v(&ours).iter().zip(&reference) {
            assert!((a - b).abs() < 1e-12, "{:?} vs {:?}", v(&ours), reference);
        }
        // And the projections happened: the plain sum differs.
        let plain: Vec<f64> = (0..3).map(|k| tasks.iter().map(|g| g[k]).sum()).collect();
        assert!(reference.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
