//! The prior against hand computations (kernel weights, shrinkage, debiasing), the honesty
//! rules (self-exclusion, the spatial validation pool), and the k-d tree against brute force.

use geolife_data::SurveyMeta;
use geolife_metrics::{ScoreFile, Scores};
use geolife_prior::sphere::{
    Point, SphereIndex, brute_nearest, brute_within, haversine_km, unit_vector,
};
use geolife_prior::{
    Kernel, PaTrain, PoRecords, PriorConfig, Target, score_split, spatial_val_ids,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn survey(id: u64, lon: f64, lat: f64) -> SurveyMeta {
    SurveyMeta {
        survey_id: id,
        lon,
        lat,
        year: 2019,
        geo_uncertainty_m: None,
        area_m2: None,
        region: "CONTINENTAL".into(),
        country: "France".into(),
    }
}

/// A PA-only (or PO-only) dense config.
fn config(pa: bool, po: bool) -> PriorConfig {
    let mut cfg = PriorConfig {
        top: 0,
        ..PriorConfig::default()
    };
    cfg.pa.enabled = pa;
    cfg.po.enabled = po;
    cfg
}

/// Score of species `id` for survey `survey` (0 when absent).
fn score(f: &ScoreFile, survey: u64, id: u32) -> f64 {
    let i = f.survey_ids.iter().position(|&s| s == survey).unwrap();
    let c = f.species.iter().position(|&s| s == id).unwrap();
    match &f.scores {
        Scores::Dense { data } => f64::from(data[i * f.species.len() + c]),
        Scores::Sparse { rows } => rows[i]
            .iter()
            .find(|e| e.0 as usize == c)
            .map_or(0.0, |e| f64::from(e.1)),
        Scores::Ranked { .. } => unreachable!(),
    }
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-5 * b.abs().max(1e-3), "{a} vs {b}");
}

/// Three train surveys north of (5, 45); the query sits at (5, 45).
fn pa_fixture() -> (Vec<SurveyMeta>, Vec<Vec<u32>>) {
    let train = vec![
        survey(1, 5.0, 45.05),
        survey(2, 5.0, 45.10),
        survey(3, 5.0, 45.30),
    ];
    let labels = vec![vec![10, 20], vec![20], vec![30]];
    (train, labels)
}

#[test]
fn pa_prior_equals_the_hand_computation() {
    let (train, labels) = pa_fixture();
    let test = [survey(100, 5.0, 45.0)];
    let d: Vec<f64> = train
        .iter()
        .map(|s| haversine_km((5.0, 45.0), (s.lon, s.lat)))
        .collect();
    let h = 10.0;
    let w: Vec<f64> = d.iter().map(|d| (-0.5 * (d / h).powi(2)).exp()).collect();

    // k = 2, no pseudo-count: the two nearest, weights relative to each other.
    let mut cfg = config(true, false);
    cfg.pa.k = 2;
    cfg.pa.bandwidth_km = h;
    let pa = PaTrain {
        surveys: &train,
        labels: &labels,
    };
    let f = score_split(&cfg, pa, Target::Test(&test), None, &|| ()).unwrap();
    assert_eq!(f.species, vec![10, 20, 30]);
    close(score(&f, 100, 10), w[0] / (w[0] + w[1]));
    close(score(&f, 100, 20), 1.0);
    assert_eq!(
        score(&f, 100, 30),
        0.0,
        "the third survey is not among the k = 2"
    );

    // k = 3 with pseudo-count α = 0.5 towards the global frequencies (1/3, 2/3, 1/3).
    cfg.pa.k = 3;
    cfg.pa.pseudo_count = 0.5;
    let f = score_split(&cfg, pa, Target::Test(&test), None, &|| ()).unwrap();
    let den = w.iter().sum::<f64>() + 0.5;
    close(score(&f, 100, 10), (w[0] + 0.5 / 3.0) / den);
    close(score(&f, 100, 20), (w[0] + w[1] + 0.5 * 2.0 / 3.0) / den);
    close(score(&f, 100, 30), (w[2] + 0.5 / 3.0) / den);

    // Uniform kernel: plain frequencies of the k nearest.
    cfg.pa.kernel = Kernel::Uniform;
    cfg.pa.pseudo_count = 0.0;
    let f = score_split(&cfg, pa, Target::Test(&test), None, &|| ()).unwrap();
    close(score(&f, 100, 20), 2.0 / 3.0);
    close(score(&f, 100, 30), 1.0 / 3.0);
}

#[test]
fn po_prior_equals_the_hand_computation() {
    let (train, labels) = pa_fixture();
    let test = [survey(100, 5.0, 45.0)];
    // Two records of 10 and one of 20 near the survey, one of 30 far away (outside 25 km).
    let places = [
        (5.0, 45.02, 10),
        (5.02, 45.0, 10),
        (5.0, 45.1, 20),
        (8.0, 47.0, 30),
    ];
    let d: Vec<f64> = places
        .iter()
        .map(|&(lon, lat, _)| haversine_km((5.0, 45.0), (lon, lat)))
        .collect();
    assert!(d[2] < 25.0 && d[3] > 25.0);
    let w: Vec<f64> = d[..3]
        .iter()
        .map(|d| (-0.5 * (d / 10.0).powi(2)).exp())
        .collect();
    let total = w.iter().sum::<f64>();
    let big_g = [0.5, 0.25, 0.25]; // global PO shares of 10, 20, 30
    let g = [1.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0]; // PA frequencies
    let pa = PaTrain {
        surveys: &train,
        labels: &labels,
    };
    let run = |cfg: &PriorConfig| {
        let po = PoRecords::from_places(places);
        score_split(cfg, pa, Target::Test(&test), Some(&po), &|| ()).unwrap()
    };

    // Plain share, β = 2, scaled by the PA pool's mean species count (4/3).
    let mut cfg = config(false, true);
    cfg.po.debias = false;
    cfg.po.pseudo_count = 2.0;
    let f = run(&cfg);
    let m = 4.0 / 3.0;
    close(
        score(&f, 100, 10),
        m * (w[0] + w[1] + 2.0 * big_g[0]) / (total + 2.0),
    );
    close(
        score(&f, 100, 20),
        m * (w[2] + 2.0 * big_g[1]) / (total + 2.0),
    );
    close(score(&f, 100, 30), m * (2.0 * big_g[2]) / (total + 2.0));

    // Debiased: g_s (c_s + β) / (C G_s + β).
    cfg.po.debias = true;
    let f = run(&cfg);
    close(
        score(&f, 100, 10),
        g[0] * (w[0] + w[1] + 2.0) / (total * big_g[0] + 2.0),
    );
    close(
        score(&f, 100, 20),
        g[1] * (w[2] + 2.0) / (total * big_g[1] + 2.0),
    );
    close(score(&f, 100, 30), g[2] * 2.0 / (total * big_g[2] + 2.0));

    // Blend: (1 - λ) PA + λ PO.
    let mut both = cfg.clone();
    both.pa.enabled = true;
    both.pa.k = 3;
    both.po_weight = 0.25;
    let pa_only = {
        let mut c = both.clone();
        c.po.enabled = false;
        c
    };
    let (fb, fa, fo) = (run(&both), run(&pa_only), run(&cfg));
    for s in [10, 20, 30] {
        close(
            score(&fb, 100, s),
            0.75 * score(&fa, 100, s) + 0.25 * score(&fo, 100, s),
        );
    }
}

#[test]
fn train_surveys_never_see_their_own_labels() {
    // Each survey holds its own species (its id) and the shared species 1; surveys 1 and 2
    // share a place, so they see each other but never themselves.
    let lons = [5.0, 5.0, 5.02, 5.03, 5.04, 5.05];
    let train: Vec<SurveyMeta> = (1..=6)
        .map(|i| survey(i, lons[i as usize - 1], 45.0))
        .collect();
    let labels: Vec<Vec<u32>> = (1..=6).map(|i| vec![1, 100 + i as u32]).collect();
    let mut cfg = config(true, false);
    cfg.pa.k = 3;
    let pa = PaTrain {
        surveys: &train,
        labels: &labels,
    };
    let f = score_split(&cfg, pa, Target::Train, None, &|| ()).unwrap();
    assert_eq!(f.split, "train");
    assert_eq!(f.survey_ids, (1..=6).collect::<Vec<u64>>());
    for i in 1..=6u64 {
        assert_eq!(score(&f, i, 100 + i as u32), 0.0, "survey {i} saw itself");
        close(score(&f, i, 1), 1.0);
    }
    assert!(
        score(&f, 1, 102) > 0.0,
        "survey 1 sees survey 2 at its place"
    );
    // As a test survey at the same place, the labels are visible.
    let f = score_split(&cfg, pa, Target::Test(&train[..1]), None, &|| ()).unwrap();
    assert!(score(&f, 1, 101) > 0.0);
}

#[test]
fn validation_surveys_only_see_the_training_part() {
    let mut rng = StdRng::seed_from_u64(7);
    let train: Vec<SurveyMeta> = (1..=400)
        .map(|i| survey(i, rng.random_range(2.0..6.0), rng.random_range(44.0..47.0)))
        .collect();
    // Every survey holds one species of its own: any of them in a validation row is a leak.
    let labels: Vec<Vec<u32>> = (1..=400).map(|i| vec![1, 1000 + i as u32]).collect();
    let val = spatial_val_ids(&train, 0.2, 30.0, 3);
    assert!((80..200).contains(&val.len()), "{}", val.len());
    // The training rule: whole blocks; no block has surveys on both sides.
    let block = |s: &SurveyMeta| geolife_data::split::block_of(s.lon, s.lat, 30.0);
    let val_blocks: std::collections::HashSet<_> = train
        .iter()
        .filter(|s| val.contains(&s.survey_id))
        .map(block)
        .collect();
    for s in train.iter().filter(|s| !val.contains(&s.survey_id)) {
        assert!(!val_blocks.contains(&block(s)));
    }
    let mut cfg = config(true, false);
    cfg.pa.k = 30;
    cfg.pa.pseudo_count = 1.0;
    let pa = PaTrain {
        surveys: &train,
        labels: &labels,
    };
    let f = score_split(&cfg, pa, Target::Val(&val), None, &|| ()).unwrap();
    assert_eq!(f.split, "val");
    let mut sorted = val.clone();
    sorted.sort_unstable();
    assert_eq!(f.survey_ids, sorted);
    let val_species: std::collections::HashSet<u32> =
        val.iter().map(|&id| 1000 + id as u32).collect();
    let Scores::Dense { data } = &f.scores else {
        panic!("dense expected")
    };
    for (c, sp) in f.species.iter().enumerate() {
        if val_species.contains(sp) {
            for i in 0..f.len() {
                assert_eq!(data[i * f.species.len() + c], 0.0, "species {sp} leaked");
            }
        }
    }
    // An unknown validation id is refused.
    assert!(score_split(&cfg, pa, Target::Val(&[999_999]), None, &|| ()).is_err());
}

fn random_points(rng: &mut StdRng, n: usize) -> Vec<(u32, Point)> {
    let mut out: Vec<(u32, Point)> = (0..n)
        .map(|i| {
            let lon = rng.random_range(-10.0..30.0);
            let lat = rng.random_range(36.0..70.0);
            (i as u32, unit_vector(lon, lat))
        })
        .collect();
    // Repeated places, as in the real metadata.
    for i in 0..n / 20 {
        out.push(((n + i) as u32, out[i].1));
    }
    out
}

#[test]
fn kd_tree_equals_brute_force_on_random_points() {
    let mut rng = StdRng::seed_from_u64(11);
    let entries = random_points(&mut rng, 3000);
    let index = SphereIndex::new(&entries);
    assert_eq!(index.len(), entries.len());
    for _ in 0..200 {
        let q = unit_vector(rng.random_range(-10.0..30.0), rng.random_range(36.0..70.0));
        for k in [1, 7, 50] {
            let fast = index.nearest(&q, k);
            let slow = brute_nearest(&entries, &q, k);
            assert_eq!(fast.len(), k);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a.km - b.km).abs() < 1e-3, "{a:?} vs {b:?}");
            }
        }
        let km = rng.random_range(10.0..300.0);
        let mut fast: Vec<u32> = index.within(&q, km).iter().map(|h| h.item).collect();
        let slow = brute_within(&entries, &q, km);
        fast.sort_unstable();
        // Points within a metre of the radius may fall either side in f32.
        let sure: Vec<u32> = slow
            .iter()
            .filter(|h| h.km < km - 1e-3)
            .map(|h| h.item)
            .collect();
        for item in &sure {
            assert!(fast.binary_search(item).is_ok(), "missed {item}");
        }
        assert!(fast.len() <= slow.len() + 2);
    }
    assert!(
        SphereIndex::new(&[])
            .nearest(&[1.0, 0.0, 0.0], 3)
            .is_empty()
    );
}
