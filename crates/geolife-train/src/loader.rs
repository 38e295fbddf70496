//! A multi-threaded prefetching batch loader: worker threads gather and transform batches ahead
//! of the training step through bounded channels, and batches arrive in a fixed order, so a run
//! is reproducible whatever the thread timing.

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use geolife_data::cache::Batch;

use crate::config::{TrainConfig, TransformMode};
use crate::transform::{self, InputStats, Inputs};
use crate::vocab::Vocabulary;

/// Per-survey access to raw inputs (implemented by the packed cache).
pub trait SampleSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy the rows `indices` into `out` (contiguous buffers, allocations reused); the
    /// packed cache does this with its own [`PackedSplit::gather`](geolife_data::cache::PackedSplit::gather).
    fn gather(&self, indices: &[usize], out: &mut Batch);
    /// `(channels, height, width)` of a patch.
    fn patch_shape(&self) -> [usize; 3];
    /// Values per first-axis channel of the Landsat and bioclim cubes.
    fn cube_channel_len(&self) -> (usize, usize);
}

/// What a worker does to each batch.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub mode: TransformMode,
    pub stats: InputStats,
    /// Random flips / rotations (training only).
    pub flip: bool,
    pub rot90: bool,
    /// Mixup probability and Beta alpha (training only; 0 disables).
    pub mixup_prob: f64,
    pub mixup_alpha: f64,
    /// Base seed; batch `b` of epoch `e` uses an RNG derived from (seed, e, b).
    pub seed: u64,
    pub epoch: usize,
    /// Location prior rows of the source's surveys, when the model takes them (mixed with
    /// the other inputs under mixup).
    pub prior: Option<std::sync::Arc<crate::location::PriorRows>>,
    /// The cache's tabular columns in the model's order, when the two differ (matched by name;
    /// `stats.tabular` is then in the model's order too).
    pub tabular_columns: Option<std::sync::Arc<transform::TabularColumns>>,
}

impl BatchPlan {
    /// The training plan of epoch `epoch`: the config's transforms, augmentations and mixup.
    pub fn training(cfg: &TrainConfig, stats: InputStats, epoch: usize) -> BatchPlan {
        BatchPlan {
            mode: cfg.transforms.mode,
            stats,
            flip: cfg.transforms.flip,
            rot90: cfg.transforms.rot90,
            mixup_prob: cfg.train.mixup_prob,
            mixup_alpha: cfg.train.mixup_alpha,
            seed: cfg.train.seed,
            epoch,
            prior: None,
            tabular_columns: None,
        }
    }

    /// The plan for validation and prediction: the same transforms, no augmentation, no mixup
    /// (so no batch draws anything random).
    pub fn inference(mode: TransformMode, stats: InputStats) -> BatchPlan {
        BatchPlan {
            mode,
            stats,
            flip: false,
            rot90: false,
            mixup_prob: 0.0,
            mixup_alpha: 1.0,
            seed: 0,
            epoch: 0,
            prior: None,
            tabular_columns: None,
        }
    }
}

/// A ready batch: transformed inputs, (mixed) soft targets and the raw label sets.
#[derive(Debug, Clone, Default)]
pub struct ReadyBatch {
    pub index: usize,
    pub survey_ids: Vec<u64>,
    pub inputs: Inputs,
    pub targets: Vec<f32>,
    pub labels: Vec<Vec<u32>>,
    pub mixed: bool,
}

/// Stable per-(seed, epoch, batch) RNG seed (SplitMix64 finaliser over the three numbers).
pub fn derive_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (batch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Build one batch (used by the workers, and directly for tests).
pub fn build_batch<S: SampleSource + ?Sized>(
    source: &S,
    indices: &[usize],
    index: usize,
    plan: &BatchPlan,
    vocab: &Vocabulary,
) -> ReadyBatch {
    let mut rng = StdRng::seed_from_u64(derive_seed(plan.seed, plan.epoch, index));
    let [c, h, w] = source.patch_shape();
    let (ls_len, bc_len) = source.cube_channel_len();
    let mut raw = Batch::default();
    source.gather(indices, &mut raw);
    if plan.flip || plan.rot90 {
        for px in raw.patches.chunks_exact_mut(c * h * w) {
            let rot = if plan.rot90 {
                rng.random_range(0..4u8)
            } else {
                0
            };
            let (hf, vf) = if plan.flip {
                (rng.random_bool(0.5), rng.random_bool(0.5))
            } else {
                (false, false)
            };
            transform::augment_patch(px, c, h, w, rot, hf, vf);
        }
    }
    let Batch {
        survey_ids,
        tabular: tab,
        landsat: ls,
        bioclim: bc,
        patches: px,
        labels,
        ..
    } = raw;
    let mut inputs = Inputs {
        n: indices.len(),
        ..Inputs::default()
    };
    let tab = match &plan.tabular_columns {
        Some(columns) => columns.apply(&tab),
        None => tab,
    };
    transform::tabular(plan.mode, &plan.stats.tabular, &tab, &mut inputs.tabular);
    transform::cube(
        plan.mode,
        &plan.stats.landsat,
        ls_len,
        &ls,
        &mut inputs.landsat,
    );
    transform::cube(
        plan.mode,
        &plan.stats.bioclim,
        bc_len,
        &bc,
        &mut inputs.bioclim,
    );
    transform::patches(
        plan.mode,
        &plan.stats.patch,
        h * w,
        &px,
        &mut inputs.sentinel,
    );
    if let Some(prior) = &plan.prior {
        prior.fill(indices, &mut inputs.prior);
    }
    let mut targets = Vec::new();
    vocab.multi_hot(&labels, &mut targets);
    let mut mixed = false;
    if plan.mixup_prob > 0.0 && rng.random_bool(plan.mixup_prob.clamp(0.0, 1.0)) {
        transform::mixup(&mut inputs, &mut targets, plan.mixup_alpha, &mut rng);
        mixed = true;
    }
    ReadyBatch {
        index,
        survey_ids,
        inputs,
        targets,
        labels,
        mixed,
    }
}

/// Run `consume` on every batch of `batches[start..]`, in order (indices stay absolute), while
/// `workers` threads prepare up to `prefetch` batches each ahead. `consume` returning
/// `Ok(Break)` stops the loop early (the result is `Break`), returning `Err` stops it with the
/// error; either way the workers exit when their channel closes.
#[allow(clippy::too_many_arguments)]
pub fn for_each_batch<S, E>(
    source: &S,
    batches: &[Vec<usize>],
    start: usize,
    plan: &BatchPlan,
    vocab: &Vocabulary,
    workers: usize,
    prefetch: usize,
    mut consume: impl FnMut(ReadyBatch) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<()>, E>
where
    S: SampleSource + ?Sized,
{
    let start = start.min(batches.len());
    let workers = workers.max(1).min((batches.len() - start).max(1));
    std::thread::scope(|scope| {
        let mut receivers: Vec<Receiver<ReadyBatch>> = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<ReadyBatch>(prefetch.max(1));
            receivers.push(rx);
            scope.spawn(move || {
                for b in (start + w..batches.len()).step_by(workers) {
                    let batch = build_batch(source, &batches[b], b, plan, vocab);
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
        }
        for b in 0..batches.len() - start {
            // A worker only disappears early by panicking, which the scope re-raises.
            let Ok(batch) = receivers[b % workers].recv() else {
                break;
            };
            match consume(batch) {
                Ok(ControlFlow::Continue(())) => {}
                stop => {
                    drop(receivers);
                    return stop;
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    })
}

/// Cut `order` into batches of `batch_size` (the last one may be shorter).
pub fn batches_of(order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transform::MeanStd;

    /// An in-memory source: survey i has tabular [i], cubes of value i, patch of value i.
    pub(crate) struct Toy {
        pub n: usize,
        pub tab: Vec<f32>,
        pub ls: Vec<f32>,
        pub bc: Vec<f32>,
        pub px: Vec<u8>,
        pub labels: Vec<Vec<u32>>,
    }

    impl Toy {
        pub(crate) fn new(n: usize) -> Self {
            Self {
                n,
                tab: (0..n).map(|i| i as f32).collect(),
                ls: (0..n).flat_map(|i| [i as f32; 2]).collect(),
                bc: (0..n).flat_map(|i| [i as f32; 2]).collect(),
                px: (0..n).flat_map(|i| [i as u8; 4]).collect(),
                labels: (0..n).map(|i| vec![(i % 3) as u32]).collect(),
            }
        }
    }

    impl SampleSource for Toy {
        fn len(&self) -> usize {
            self.n
        }
        fn gather(&self, indices: &[usize], out: &mut Batch) {
            *out = Batch::default();
            for &i in indices {
                out.survey_ids.push(100 + i as u64);
                out.tabular.extend_from_slice(&self.tab[i..i + 1]);
                out.landsat.extend_from_slice(&self.ls[2 * i..2 * i + 2]);
                out.bioclim.extend_from_slice(&self.bc[2 * i..2 * i + 2]);
                out.patches.extend_from_slice(&self.px[4 * i..4 * i + 4]);
                out.labels.push(self.labels[i].clone());
            }
        }
        fn patch_shape(&self) -> [usize; 3] {
            [1, 2, 2]
        }
        fn cube_channel_len(&self) -> (usize, usize) {
            (2, 2)
        }
    }

    pub(crate) fn plan() -> BatchPlan {
        let one = MeanStd {
            mean: 0.0,
            std: 1.0,
        };
        BatchPlan {
            mode: TransformMode::Geolife,
            stats: InputStats {
                tabular: vec![one],
                landsat: vec![one],
                bioclim: vec![one],
                patch: vec![one],
            },
            flip: false,
            rot90: false,
            mixup_prob: 0.0,
            mixup_alpha: 0.4,
            seed: 1,
            epoch: 0,
            prior: None,
            tabular_columns: None,
        }
    }

    #[test]
    fn batches_arrive_in_order_with_several_workers() {
        let toy = Toy::new(50);
        let order: Vec<usize> = (0..50).rev().collect();
        let batches = batches_of(&order, 7);
        let vocab = Vocabulary::from_species(vec![0, 1, 2]);
        let mut seen = Vec::new();
        assert!(
            for_each_batch(&toy, &batches, 0, &plan(), &vocab, 3, 1, |b| {
                seen.extend(b.survey_ids.iter().map(|&s| s as usize - 100));
                assert_eq!(b.inputs.tabular.len(), b.inputs.n);
                assert_eq!(b.targets.len(), 3 * b.inputs.n);
                Ok::<_, ()>(ControlFlow::Continue(()))
            })
            .unwrap()
            .is_continue()
        );
        assert_eq!(seen, order);
    }

    #[test]
    fn starting_mid_epoch_gives_the_same_batches() {
        let toy = Toy::new(30);
        let batches = batches_of(&(0..30).collect::<Vec<_>>(), 4);
        let vocab = Vocabulary::from_species(vec![0, 1, 2]);
        let mut p = plan();
        p.mixup_prob = 0.5;
        let mut all = Vec::new();
        assert!(
            for_each_batch(&toy, &batches, 0, &p, &vocab, 2, 1, |b| {
                all.push((b.index, b.targets));
                Ok::<_, ()>(ControlFlow::Continue(()))
            })
            .unwrap()
            .is_continue()
        );
        let mut tail = Vec::new();
        assert!(
            for_each_batch(&toy, &batches, 3, &p, &vocab, 3, 1, |b| {
                tail.push((b.index, b.targets));
                Ok::<_, ()>(ControlFlow::Continue(()))
            })
            .unwrap()
            .is_continue()
        );
        assert_eq!(&all[3..], &tail[..]);
    }

    #[test]
    fn a_consumer_error_stops_the_loop() {
        let toy = Toy::new(50);
        let batches = batches_of(&(0..50).collect::<Vec<_>>(), 5);
        let vocab = Vocabulary::from_species(vec![0, 1, 2]);
        let mut count = 0;
        let r = for_each_batch(&toy, &batches, 0, &plan(), &vocab, 2, 2, |_| {
            count += 1;
            if count == 3 {
                Err("stop")
            } else {
                Ok(ControlFlow::Continue(()))
            }
        });
        assert_eq!(r, Err("stop"));
        assert_eq!(count, 3);
    }

    #[test]
    fn a_consumer_break_stops_the_loop_without_error() {
        let toy = Toy::new(50);
        let batches = batches_of(&(0..50).collect::<Vec<_>>(), 5);
        let vocab = Vocabulary::from_species(vec![0, 1, 2]);
        let mut seen = Vec::new();
        let r = for_each_batch(&toy, &batches, 0, &plan(), &vocab, 2, 2, |b| {
            seen.push(b.index);
            Ok::<_, ()>(if b.index == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        });
        assert_eq!(r, Ok(ControlFlow::Break(())));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn batch_randomness_depends_only_on_seed_epoch_and_index() {
        let toy = Toy::new(20);
        let vocab = Vocabulary::from_species(vec![0, 1, 2]);
        let mut p = plan();
        p.mixup_prob = 1.0;
        let a = build_batch(&toy, &[0, 1, 2, 3], 5, &p, &vocab);
        let b = build_batch(&toy, &[0, 1, 2, 3], 5, &p, &vocab);
        assert!(a.mixed);
        assert_eq!(a.targets, b.targets);
        assert_eq!(a.inputs.tabular, b.inputs.tabular);
    }
}
