//! `geolife synth` (with presence-only records) + `geolife prior` + `geolife evaluate`: the
//! location prior beats the species-frequency baseline on the synthetic test split, the
//! brute-force search gives the same scores, and the val/train splits and `--run` work.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;

/// Test samples-F1 at the best K (`evaluate --json`), and the F1@K curve.
fn best_f1(data: &Path, predictions: &Path) -> (f64, Vec<f64>) {
    let j = ok_json(&[
        "evaluate",
        "--solution",
        s(&data.join("GLC24_SOLUTION_FILE.csv")),
        "--predictions",
        s(predictions),
        "--json",
    ]);
    let curve = j["f1_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (j["best_k_f1"].as_f64().unwrap(), curve)
}

/// `geolife prior` arguments for `split`, writing `out`, plus `extra`.
fn prior_args<'a>(
    data: &'a Path,
    split: &'a str,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "prior",
        "--data",
        s(data),
        "--split",
        split,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// Train survey ids (ascending, distinct) and the species ranked by PA train frequency.
fn train_ids_and_frequency_ranking(data: &Path) -> (Vec<u64>, Vec<u32>) {
    let text = std::fs::read_to_string(data.join("GLC24_PA_metadata_train.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_sp, c_id) = (col("speciesId"), col("surveyId"));
    let mut pairs: Vec<(u64, u32)> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let sp = cells[c_sp].parse::<f64>().unwrap() as u32;
            (cells[c_id].parse().unwrap(), sp)
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut count: HashMap<u32, usize> = HashMap::new();
    for &(_, sp) in &pairs {
        *count.entry(sp).or_default() += 1;
    }
    let mut ranked: Vec<(u32, usize)> = count.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut ids: Vec<u64> = pairs.iter().map(|p| p.0).collect();
    ids.dedup();
    (ids, ranked.into_iter().map(|r| r.0).collect())
}

#[test]
fn prior_beats_the_frequency_baseline_on_synthetic_test_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (o, _) = run_expect(
        &[
            "synth",
            "--out",
            s(&data),
            "--surveys",
            "1500",
            "--test-surveys",
            "200",
            "--species",
            "100",
            "--json",
        ],
        0,
    );
    assert!(o.contains("\"po_records\": 15000"), "{o}");
    assert!(data.join("GLC24_P0_metadata_train.csv").is_file());

    // The species-frequency baseline: every test survey gets the train ranking.
    let (train_ids, ranking) = train_ids_and_frequency_ranking(&data);
    let solution = std::fs::read_to_string(data.join("GLC24_SOLUTION_FILE.csv")).unwrap();
    let top: Vec<String> = ranking.iter().take(50).map(u32::to_string).collect();
    let mut freq_csv = String::from("surveyId,predictions\n");
    for line in solution.lines().skip(1) {
        let id = line.split(',').next().unwrap();
        freq_csv.push_str(&format!("{id},{}\n", top.join(" ")));
    }
    let freq_path = dir.path().join("frequency.csv");
    std::fs::write(&freq_path, freq_csv).unwrap();
    let (freq, _) = best_f1(&data, &freq_path);

    let prior = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = prior_args(&data, "test", &out, &["--json"]);
        args.extend_from_slice(extra);
        let j = ok_json(&args);
        assert_eq!(j["surveys"], 200);
        let po_rows = if extra.contains(&"--no-po") { 0 } else { 15000 };
        assert_eq!(j["po_records"], po_rows);
        out
    };
    let (blend, curve) = best_f1(&data, &prior("prior.safetensors", &[]));
    let (pa, _) = best_f1(&data, &prior("pa.safetensors", &["--no-po"]));
    let (po, _) = best_f1(&data, &prior("po.safetensors", &["--no-pa"]));
    eprintln!("test F1 at best K: frequency {freq:.4}, PA {pa:.4}, PO {po:.4}, blend {blend:.4}");
    assert!(
        blend > freq + 0.01,
        "prior {blend:.4} vs frequency {freq:.4}"
    );
    assert!(
        pa > freq && po > freq,
        "each source alone: PA {pa:.4}, PO {po:.4}"
    );

    // Brute force finds the same neighbours: the same F1 at every K.
    let (_, brute) = best_f1(
        &data,
        &prior(
            "brute.safetensors",
            &["--brute-force", "--max-surveys", "200"],
        ),
    );
    for (k, (a, b)) in curve.iter().zip(&brute).enumerate() {
        assert!(
            (a - b).abs() < 1e-9,
            "F1@{}: tree {a} vs brute force {b}",
            k + 1
        );
    }

    // Validation surveys: the spatial split, or a run's.
    let val = dir.path().join("val.safetensors");
    let j = ok_json(&prior_args(&data, "val", &val, &["--json"]));
    let n_val = j["surveys"].as_u64().unwrap();
    assert!((150..600).contains(&n_val), "{n_val}");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("run.json"),
        serde_json::json!({ "val_survey_ids": &train_ids[..25], "other": 1 }).to_string(),
    )
    .unwrap();
    let j = ok_json(&prior_args(
        &data,
        "val",
        &val,
        &["--run", s(&run), "--json"],
    ));
    assert_eq!(j["surveys"], 25);
    let j = ok_json(&prior_args(&data, "train", &val, &["--top", "0", "--json"]));
    assert_eq!(j["surveys"].as_u64().unwrap() as usize, train_ids.len());
    assert_eq!(j["layout"], "dense");

    // Bad settings are refused with the key's name.
    let (_, e) = run_expect(&prior_args(&data, "test", &val, &["--po-weight", "2"]), 1);
    assert!(e.contains("po_weight"), "{e}");
}
