//! The geolife-metrics fuzz targets: score files (geolife safetensors; Kaggle and malpolon
//! text), solution files and survey-id lists. Seeds are score files written by
//! `ScoreFile::write` and the first rows of the real prediction files. Shared by
//! `tests/fuzz_scores.rs` and `examples/fuzz_scores.rs`; the engine is geolife-data's
//! `tests/fuzz_common`.

use std::path::PathBuf;
use std::sync::Arc;

use rand::Rng;
use rand::seq::IndexedRandom;

use geolife_metrics::{ScoreFile, Scores, read_solution, read_survey_ids};

use crate::fuzz_common::{
    Case, Input, Target, Verdict, class, mutate_csv, mutate_safetensors,
    mutate_safetensors_or_bytes,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Dense, sparse (with an empty row) and ranked score files, written by the writer.
pub fn safetensors_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let base = ScoreFile {
        model: "fuzz".into(),
        split: "val".into(),
        survey_ids: vec![642, 1792, 3256],
        species: vec![4, 12, 392, 11254, 7],
        scores: Scores::Dense {
            data: (0..15).map(|i| i as f32 / 15.0).collect(),
        },
    };
    let sparse = ScoreFile {
        scores: Scores::Sparse {
            rows: vec![
                vec![(0, 0.9), (3, 0.1)],
                vec![],
                vec![(4, 0.5), (1, 0.25), (2, 0.125)],
            ],
        },
        ..base.clone()
    };
    let ranked = ScoreFile {
        scores: Scores::Ranked {
            rows: vec![vec![2, 0], vec![1], vec![4, 3, 2, 1, 0]],
        },
        ..base.clone()
    };
    let empty = ScoreFile {
        survey_ids: vec![],
        scores: Scores::Dense { data: vec![] },
        ..base.clone()
    };
    [base, sparse, ranked, empty]
        .iter()
        .enumerate()
        .map(|(i, sf)| {
            let p = dir.path().join(format!("{i}.safetensors"));
            sf.write(&p).expect("writing a seed score file");
            std::fs::read(&p).expect("reading it back")
        })
        .collect()
}

/// The first rows of the real Kaggle submission, malpolon top-25 file and solution file.
pub fn text_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in [
        "tests/data/glc24-real/predictions/official_multimodal_baseline_top25.csv",
        "tests/data/glc24-real/predictions/malpolon_mme_top25_probas.csv",
        "tests/data/glc24-real/GLC24_SOLUTION_FILE.csv",
    ] {
        let text = std::fs::read_to_string(repo().join(f)).expect("real prediction file");
        let head: Vec<&str> = text.lines().take(6).collect();
        out.push((head.join("\n") + "\n").into_bytes());
    }
    out.push(b"surveyId,lon\n642,1.5\n642.0,2\n1792,3\n".to_vec());
    out
}

/// Everything a score file offers once read (validated invariants must hold).
fn use_scores(sf: &ScoreFile) {
    let all = sf.top_all(5);
    assert_eq!(all.len(), sf.len());
    let rows: Vec<usize> = (0..sf.len()).rev().collect();
    let sub = sf.subset(&rows);
    assert_eq!(sub.len(), sf.len());
    assert_eq!(sf.index().len(), sf.len());
}

pub fn check_bytes(c: &Case) -> Verdict {
    match ScoreFile::from_bytes(c.path, c.bytes) {
        Ok(sf) => {
            use_scores(&sf);
            Ok(format!("Ok {}", sf.scores.kind()))
        }
        Err(e) => Err(class(&e)),
    }
}

pub fn check_text_file(c: &Case) -> Verdict {
    let a = match ScoreFile::read(c.path) {
        Ok(sf) => {
            use_scores(&sf);
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    let b = match read_solution(c.path) {
        Ok(_) => "Ok".to_string(),
        Err(e) => class(&e),
    };
    let d = match read_survey_ids(c.path) {
        Ok(_) => "Ok".to_string(),
        Err(e) => class(&e),
    };
    Ok(format!("{a}/{b}/{d}"))
}

/// Every geolife-metrics target.
pub fn targets() -> Vec<Target> {
    let st = Arc::new(safetensors_seeds());
    let text = Arc::new(text_seeds());
    let max_st = st.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64;
    let st2 = st.clone();
    vec![
        Target::new(
            "scores-safetensors",
            "ScoreFile::from_bytes (+ top_all, subset, index)",
            Input::Bytes,
            move |rng| {
                let s = st.choose(rng).cloned().unwrap_or_default();
                mutate_safetensors_or_bytes(rng, &s, &st, max_st)
            },
            check_bytes,
        ),
        Target::new(
            "scores-text",
            "ScoreFile::read, read_solution, read_survey_ids (files; Kaggle, malpolon, solution)",
            Input::File("csv"),
            move |rng| {
                let s = text.choose(rng).cloned().unwrap_or_default();
                if rng.random_bool(0.05) {
                    // A safetensors file under a text name: the sniffing must hold.
                    let s = st2.choose(rng).cloned().unwrap_or_default();
                    return mutate_safetensors(rng, &s, &st2);
                }
                mutate_csv(rng, &s, &text)
            },
            check_text_file,
        ),
    ]
}
