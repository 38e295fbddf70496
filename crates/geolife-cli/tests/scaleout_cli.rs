//! Issue 23 on one machine: `geolife pipeline --jobs 2` trains the members in two child
//! processes and writes the same bytes as the sequential run (the cores are divided between
//! the children, so this also checks that the CPU kernels give the same bits on any thread
//! count); Ctrl-C (SIGINT to the parent's process group) stops the children at a checkpoint
//! (exit 130) and the same command continues to the same bytes. k-fold members (`validation.folds`): every fold's run,
//! out-of-fold validation scores over every train survey, test scores the mean of the folds'.
#![cfg(all(feature = "dl", unix))]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    assert_same_results, run_ok, small_packed_dataset, tiny_pipeline, wait_while_running,
};

/// configs/pipeline-tiny.toml at 2 epochs on the shared cache.
fn pipeline(data: &Path, cache: &Path, solution: &Path, out: &Path) -> Command {
    let mut c = tiny_pipeline(data, out, solution);
    c.arg("--cache").arg(cache);
    c
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn two_jobs_equal_the_sequential_run_and_ctrl_c_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, cache, solution) = small_packed_dataset(d);
    let seq = d.join("seq");
    run_ok(&mut pipeline(&data, &cache, &solution, &seq));

    let par = d.join("par");
    let log = run_ok(pipeline(&data, &cache, &solution, &par).args(["--jobs", "2"]));
    assert!(
        log.contains("2 runs of 2 members to train, 2 at once"),
        "{log}"
    );
    assert!(log.contains("`tiny-resnet`: started (pid"), "{log}");
    for m in ["tiny-convnext", "tiny-resnet"] {
        let member_log = std::fs::read_to_string(par.join(format!("members/{m}/member.log")))
            .unwrap_or_default();
        assert!(member_log.contains("epoch 2/2"), "{m}: {member_log}");
    }
    assert_same_results(&seq, &par, "--jobs 2 against the sequential run");

    // Ctrl-C once both children train: SIGINT to the parent's whole process group, as a
    // terminal sends it. The children, in their own groups, get it once (from the parent), so
    // each writes its checkpoint and exits; the parent exits 130; the same command then
    // finishes with the same bytes.
    let termed = d.join("termed");
    use std::os::unix::process::CommandExt;
    let mut child = pipeline(&data, &cache, &solution, &termed)
        .args(["--jobs", "2"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let training = |m: &str| {
        std::fs::read_to_string(termed.join(format!("members/{m}/member.log")))
            .is_ok_and(|t| t.contains("epoch 1/2 batch"))
    };
    wait_while_running(&mut child, "both children trained", || {
        training("tiny-convnext") && training("tiny-resnet")
    });
    run_ok(Command::new("kill").args(["-INT", "--", &format!("-{}", child.id())]));
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("stopped by SIGINT"), "{text}");
    // The children are gone, each after writing its checkpoint (or finishing its member).
    let pids: Vec<u32> = text
        .match_indices("started (pid ")
        .map(|(i, _)| {
            let rest = &text[i + "started (pid ".len()..];
            rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} still runs after Ctrl-C");
    }
    // Each child stopped at an optimiser step with a checkpoint (a second SIGINT would have
    // ended it before), or had finished.
    for m in ["tiny-convnext", "tiny-resnet"] {
        let dir = termed.join("members").join(m);
        let log = std::fs::read_to_string(dir.join("train.log")).unwrap_or_default();
        assert!(
            log.contains("stopped by SIGINT at epoch") || dir.join("member.json").is_file(),
            "{m}: no checkpoint at Ctrl-C: {log}"
        );
    }
    run_ok(pipeline(&data, &cache, &solution, &termed).args(["--jobs", "2"]));
    assert_same_results(&seq, &termed, "Ctrl-C to --jobs 2, then the same command");
}

/// A dense score file's `(survey ids, scores)`.
fn dense(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("survey_ids").unwrap();
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let scores = st.tensor("scores").unwrap();
    let scores = scores
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, scores)
}

#[test]
fn k_fold_members_score_every_train_survey_out_of_fold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, cache, solution) = small_packed_dataset(d);
    let out = d.join("kfold");
    let log = run_ok(pipeline(&data, &cache, &solution, &out).args([
        "--set",
        "validation.folds=3",
        "--jobs",
        "2",
    ]));
    assert!(log.contains("6 runs of 2 members to train"), "{log}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // Out-of-fold: the blend, policy and report see every train survey.
    assert_eq!(report["n_val_surveys"], 300, "{report}");
    let folds = report["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 6, "{report}");
    let mut n_val = 0;
    for f in folds.iter().filter(|f| f["member"] == "tiny-convnext") {
        n_val += f["n_val"].as_u64().unwrap();
        let v = f["best_val_f1"].as_f64().unwrap();
        assert!(v > 0.0 && v <= 1.0, "{f}");
    }
    assert_eq!(n_val, 300, "the folds partition the train surveys");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("out-of-fold") && md.contains("| tiny-resnet | 2 |"),
        "{md}"
    );

    // The member's validation scores are its folds' joined, each survey from the one run that
    // validated on it; its test scores the mean of its folds' (computed here by hand).
    let member = out.join("members/tiny-convnext");
    let (oof_ids, oof) = dense(&member.join("val_scores.safetensors"));
    assert_eq!(oof_ids.len(), 300);
    let mut seen = std::collections::HashSet::new();
    let (mut test_sum, mut test_ids) = (Vec::new(), Vec::new());
    for f in 0..3 {
        let fold = member.join(format!("fold-{f}"));
        let (ids, v) = dense(&fold.join("val_scores.safetensors"));
        let width = v.len() / ids.len();
        for (i, id) in ids.iter().enumerate() {
            assert!(seen.insert(*id), "survey {id} validated by two folds");
            let at = oof_ids.iter().position(|x| x == id).unwrap();
            assert_eq!(
                &oof[at * width..][..width],
                &v[i * width..][..width],
                "survey {id}"
            );
        }
        let (ids, t) = dense(&fold.join("test_scores.safetensors"));
        if test_sum.is_empty() {
            test_sum = vec![0f64; t.len()];
            test_ids = ids;
        }
        for (s, x) in test_sum.iter_mut().zip(&t) {
            *s += f64::from(*x) / 3.0;
        }
    }
    let (ids, mean) = dense(&member.join("test_scores.safetensors"));
    assert_eq!(ids, test_ids);
    for (a, b) in mean.iter().zip(&test_sum) {
        assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
    }
    // One fold alone, by name: a finished fold is skipped; a fold that does not exist is named.
    let again = run_ok(pipeline(&data, &cache, &solution, &out).args([
        "--set",
        "validation.folds=3",
        "--member",
        "tiny-resnet",
        "--fold",
        "1",
    ]));
    assert!(again.contains("fold 2/3: done"), "{again}");
    let bad = pipeline(&data, &cache, &solution, &out)
        .args([
            "--set",
            "validation.folds=3",
            "--member",
            "tiny-resnet",
            "--fold",
            "3",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("has no fold 3: it has 3"), "{err}");
}
