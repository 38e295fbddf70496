//! `geolife pipeline --executor slurm` on a real Slurm (issue 23): configs/pipeline-tiny.toml at
//! reduced size through an sbatch array and a final job gives the local run's submission and
//! report byte for byte; one member's task, requeued while it trains (SIGTERM, as preemption
//! does), writes its checkpoint, runs again under the same job id, resumes, and the result is
//! unchanged. Needs a running cluster: `tests/slurm/start-cluster.sh` (CI runs it first), and
//! the feature that builds this test: `cargo test -p geolife-cli --features slurm --test
//! slurm_cli`. Without Slurm it fails and says what is missing; it never skips.
#![cfg(all(feature = "slurm", unix))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_same_results, configs, run_ok, small_packed_dataset};

/// The node is up: `sinfo` answers and shows an idle or mixed node.
fn require_slurm() {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let states = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!(
            "sinfo failed ({}): {}; start a cluster with tests/slurm/start-cluster.sh",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "no Slurm client (sinfo: {e}); this test needs a running cluster: \
             tests/slurm/start-cluster.sh installs and starts one"
        ),
    };
    assert!(
        states
            .lines()
            .any(|l| matches!(l.trim(), "idle" | "mixed" | "allocated")),
        "no usable Slurm node (sinfo states: {states:?}); see tests/slurm/start-cluster.sh"
    );
}

fn pipeline(d: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_geolife"));
    c.current_dir(d)
        .args(["pipeline", "--config"])
        .arg(configs().join("pipeline-tiny.toml"))
        .args(["--data", "data", "--cache", "cache", "--out"])
        .arg(out)
        .args([
            "--set",
            "train.epochs=2",
            "--set",
            "train.checkpoint_every_steps=0",
        ])
        .args(["--test-solution", "data/GLC24_SOLUTION_FILE.csv"]);
    c
}

/// A job id from `submitted ... job ID` in the CLI's output.
fn job_after(text: &str, what: &str) -> String {
    let i = text
        .find(what)
        .unwrap_or_else(|| panic!("no `{what}` in {text}"))
        + what.len();
    text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}

fn in_queue(job: &str) -> bool {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == job || l.trim().starts_with(&format!("{job}_")))
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slurm_executor_matches_the_local_run_and_a_requeued_task_resumes() {
    require_slurm();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_packed_dataset(d);
    let local = d.join("local");
    run_ok(&mut pipeline(d, &local));

    let out: PathBuf = d.join("slurm");
    let text = run_ok(pipeline(d, &out).args(["--executor", "slurm"]));
    println!("{text}");
    let array = job_after(&text, "submitted array job ");
    let final_job = job_after(&text, "submitted final job ");
    assert!(
        text.contains("2 run(s): tiny-convnext, tiny-resnet"),
        "{text}"
    );
    let script = std::fs::read_to_string(out.join("slurm/members-0.sbatch")).unwrap();
    assert!(
        script.contains("exec ") && script.contains("--member"),
        "{script}"
    );

    // Requeue task 1 (tiny-resnet) while it trains: Slurm sends SIGTERM; geolife checkpoints
    // and exits; the task is pending again under the same id and starts 2 s after we ask.
    let task = format!("{array}_1");
    let member = out.join("members/tiny-resnet");
    wait_until("tiny-resnet training", Duration::from_secs(300), || {
        std::fs::read_to_string(member.join("train.log"))
            .is_ok_and(|t| t.contains("epoch 1/2 batch"))
    });
    run_ok(Command::new("scontrol").args(["requeue", &task]));
    println!("requeued {task}");
    wait_until(
        "tiny-resnet checkpoint at SIGTERM",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(member.join("train.log"))
                .is_ok_and(|t| t.contains("stopped by SIGTERM"))
        },
    );
    // The old run has ended (SIGTERM, checkpoint, exit) before the new one may start.
    std::thread::sleep(Duration::from_secs(2));
    run_ok(Command::new("scontrol").args(["update", &format!("jobid={task}"), "StartTime=now+2"]));
    let status = run_ok(
        Command::new(env!("CARGO_BIN_EXE_geolife"))
            .current_dir(d)
            .args(["pipeline", "--status", "--out", "slurm"]),
    );
    println!("{status}");
    assert!(status.contains("tiny-resnet"), "{status}");
    wait_until("the final job", Duration::from_secs(600), || {
        !in_queue(&final_job) && !in_queue(&array)
    });

    let member_log = std::fs::read_to_string(member.join("member.log")).unwrap();
    println!("{member_log}");
    assert!(
        member_log.contains(&format!("slurm task {task} on ")),
        "{member_log}"
    );
    assert!(
        member_log.contains(", run 1"),
        "not run again after the requeue: {member_log}"
    );
    assert!(
        member_log.contains("resuming"),
        "the requeued run did not resume: {member_log}"
    );
    assert!(
        out.join("report.json").is_file(),
        "no report: {}",
        std::fs::read_to_string(out.join("slurm/final.log")).unwrap_or_default()
    );
    assert_same_results(&local, &out, "the Slurm run against the local run");
    let status = run_ok(
        Command::new(env!("CARGO_BIN_EXE_geolife"))
            .current_dir(d)
            .args(["pipeline", "--status", "--out", "slurm"]),
    );
    assert!(status.lines().all(|l| l.contains(" done")), "{status}");
    // The same command again: nothing left to train, only a final job.
    let again = run_ok(pipeline(d, &out).args(["--executor", "slurm"]));
    assert!(
        again.contains("every run is done or queued already"),
        "{again}"
    );
    let last = job_after(&again, "submitted final job ");
    wait_until("the second final job", Duration::from_secs(120), || {
        !in_queue(&last)
    });
}
