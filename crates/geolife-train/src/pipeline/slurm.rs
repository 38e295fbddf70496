//! `geolife pipeline --executor slurm`: the members on a cluster, through the scheduler its users
//! already run. One sbatch array task per training run that is not done (a member, or one fold
//! of a k-fold member), each `geolife pipeline ... --member NAME [--fold I]`; then one final job,
//! `afterok` on the arrays, that runs the pipeline itself: every member is done, so it only
//! blends, fits the policy and writes the submission and report. The scripts, their output and
//! `jobs.json` (what was submitted) are in `<OUT>/slurm/`. Running the same command again
//! submits only the runs that are neither done nor queued, and one new final job.
//!
//! The cache and the run folder must be on a filesystem every node sees. Tasks are submitted
//! with `--requeue` and `--open-mode=append`: a preempted task gets SIGTERM, writes its
//! checkpoint and exits, and its requeued run resumes from it; its output goes on in the
//! member's `member.log`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::local::tail;
use super::members::{Unit, is_done, member_dir, member_units, pending_units, unit_dir};
use super::{PipelineOptions, ResolvedPipeline, outputs};
use crate::error::TrainError;
use crate::trainer::files;
use crate::trainer::run_dir::{read_json, write_json};

/// How to submit the pipeline to Slurm.
#[derive(Debug, Clone)]
pub struct SlurmJobs {
    /// The geolife binary, as the nodes see it (an absolute path).
    pub program: PathBuf,
    /// The arguments that make `program` this `geolife pipeline` (same config, data, out,
    /// cache, `--set`s, test solution); the tasks append `--member NAME [--fold I]`.
    pub args: Vec<OsString>,
    /// The working directory of the jobs (relative paths in `args` are from there).
    pub cwd: PathBuf,
    /// Extra `sbatch` options for every job (`--partition`, `--time`, `--gres=gpu:1`, ...).
    pub sbatch_args: Vec<String>,
}

/// The folder of the scripts, their output and `jobs.json`.
pub const SLURM_DIR: &str = "slurm";
const JOBS: &str = "jobs.json";

/// What was submitted, over every invocation (`slurm/jobs.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlurmState {
    pub submissions: Vec<Submission>,
}

/// One invocation's jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Submission {
    /// The array job (absent when every run was done or queued already).
    pub array_job: Option<String>,
    /// The runs of the array, by task index: `NAME` or `NAME fold I`.
    pub tasks: Vec<String>,
    /// The job that blends and reports once the arrays are done.
    pub final_job: String,
}

/// Checks the pipeline and writes `pipeline.toml` (as a local run does), then submits what is
/// not done; the submission (also appended to `slurm/jobs.json`).
pub fn submit_slurm(opts: &PipelineOptions, jobs: &SlurmJobs) -> Result<Submission, TrainError> {
    super::start_folder(opts)?;
    let p = &opts.pipeline;
    let dir = opts.out.join(SLURM_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
        path: dir.clone(),
        source,
    })?;
    let state_path = dir.join(JOBS);
    let mut state: SlurmState = if state_path.is_file() {
        read_json(&state_path)?
    } else {
        SlurmState::default()
    };
    let queue = squeue()?;
    // Runs queued or running already, by name, from earlier submissions, and their tasks: the
    // final job waits for those tasks (not their whole arrays, where a task that failed or
    // timed out would keep `afterok` from ever being satisfied).
    let mut in_queue: Vec<String> = Vec::new();
    let mut live: Vec<String> = Vec::new();
    for s in &state.submissions {
        let Some(array) = &s.array_job else { continue };
        for (i, t) in s.tasks.iter().enumerate() {
            let id = format!("{array}_{i}");
            if queue.iter().any(|(q, _)| *q == id) {
                in_queue.push(t.clone());
                live.push(id);
            }
        }
    }
    let todo: Vec<Unit> = pending_units(&opts.out, p)
        .into_iter()
        .filter(|&u| !in_queue.contains(&u.name(p)))
        .collect();
    let n = state.submissions.len();
    let array_job = if todo.is_empty() {
        None
    } else {
        let script = dir.join(format!("members-{n}.sbatch"));
        write_script(&script, &array_script(opts, jobs, &todo))?;
        let ours = [
            "--job-name=geolife-members".to_string(),
            format!("--array=0-{}", todo.len() - 1),
            "--requeue".into(),
            "--open-mode=append".into(),
            format!("--chdir={}", jobs.cwd.display()),
            format!(
                "--output={}",
                dir.join(format!("members-{n}-%a.out")).display()
            ),
        ];
        let id = sbatch(&ours, &jobs.sbatch_args, &script)?;
        live.push(id.clone());
        // Recorded at once: if the final job's submission fails, a rerun still knows these
        // runs are queued and does not submit them twice.
        state.submissions.push(Submission {
            array_job: Some(id.clone()),
            tasks: todo.iter().map(|&u| u.name(p)).collect(),
            final_job: String::new(),
        });
        write_json(&state_path, &state)?;
        state.submissions.pop();
        Some(id)
    };
    let script = dir.join(format!("final-{n}.sbatch"));
    write_script(&script, &final_script(opts, jobs))?;
    let mut ours = vec![
        "--job-name=geolife-final".to_string(),
        "--requeue".into(),
        "--open-mode=append".into(),
        format!("--chdir={}", jobs.cwd.display()),
        format!("--output={}", dir.join(format!("final-{n}.out")).display()),
    ];
    if !live.is_empty() {
        ours.push(format!("--dependency=afterok:{}", live.join(":")));
    }
    let final_job = sbatch(&ours, &jobs.sbatch_args, &script)?;
    // One final job: an older one still waiting is replaced by the new one (one that already
    // runs is left to finish).
    for s in &state.submissions {
        let pending = queue
            .iter()
            .any(|(id, st)| !s.final_job.is_empty() && *id == s.final_job && st == "PENDING");
        if pending {
            let _ = Command::new("scancel").arg(&s.final_job).status();
        }
    }
    let submission = Submission {
        array_job,
        tasks: todo.iter().map(|&u| u.name(p)).collect(),
        final_job,
    };
    state.submissions.push(submission.clone());
    write_json(&state_path, &state)?;
    Ok(submission)
}

/// A word for a POSIX shell, in single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quoted_command(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The array script: task `i` runs `todo[i]`, its output appended to the run's `member.log`.
fn array_script(opts: &PipelineOptions, jobs: &SlurmJobs, todo: &[Unit]) -> String {
    let p = &opts.pipeline;
    let names: Vec<String> = todo
        .iter()
        .map(|u| quote(&p.members[u.member].name))
        .collect();
    let folds: Vec<String> = todo
        .iter()
        .map(|u| {
            u.fold
                .map_or("''".into(), |f| quote(&format!("--fold={f}")))
        })
        .collect();
    let logs: Vec<String> = todo
        .iter()
        .map(|&u| {
            let d = unit_dir(&opts.out, &p.members[u.member], u.fold);
            quote(&d.join(outputs::MEMBER_LOG).to_string_lossy())
        })
        .collect();
    format!(
        "#!/bin/bash\n\
         # geolife pipeline: one task per training run that was neither done nor queued (the\n\
         # sbatch options are on its command line: see jobs.json and the README).\n\
         set -u\n\
         names=({names})\n\
         folds=({folds})\n\
         logs=({logs})\n\
         i=$SLURM_ARRAY_TASK_ID\n\
         mkdir -p \"$(dirname \"${{logs[$i]}}\")\"\n\
         echo \"slurm task ${{SLURM_ARRAY_JOB_ID}}_$i on $(hostname), run ${{SLURM_RESTART_COUNT:-0}}\" >> \"${{logs[$i]}}\"\n\
         # The cores Slurm gave the task (else all of the node's).\n\
         if [ -n \"${{SLURM_CPUS_PER_TASK:-}}\" ]; then export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi\n\
         # exec: geolife itself gets Slurm's SIGTERM (preemption, requeue), checkpoints and exits.\n\
         exec {command} --member \"${{names[$i]}}\" ${{folds[$i]}} >> \"${{logs[$i]}}\" 2>&1\n",
        names = names.join(" "),
        folds = folds.join(" "),
        logs = logs.join(" "),
        command = quoted_command(&jobs.program, &jobs.args),
    )
}

/// The final job: the pipeline itself, with every member done.
fn final_script(opts: &PipelineOptions, jobs: &SlurmJobs) -> String {
    let log = opts.out.join(SLURM_DIR).join("final.log");
    format!(
        "#!/bin/bash\n\
         # geolife pipeline: blend, policy, submission and report once every member is done.\n\
         echo \"slurm job $SLURM_JOB_ID on $(hostname)\" >> {log}\n\
         exec {command} >> {log} 2>&1\n",
        log = quote(&log.to_string_lossy()),
        command = quoted_command(&jobs.program, &jobs.args),
    )
}

fn write_script(path: &Path, text: &str) -> Result<(), TrainError> {
    crate::trainer::write_atomic(path, text.as_bytes())
}

/// `sbatch --parsable OURS USER SCRIPT` (the user's options come last and win): the job id.
fn sbatch(ours: &[String], user: &[String], script: &Path) -> Result<String, TrainError> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(ours)
        .args(user)
        .arg(script)
        .output()
        .map_err(|e| slurm_missing("sbatch", e))?;
    if !out.status.success() {
        return Err(TrainError::Invalid(format!(
            "sbatch {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(TrainError::Invalid(format!(
            "sbatch {}: expected a job id, got `{}`",
            script.display(),
            text.trim()
        )));
    }
    Ok(id)
}

fn slurm_missing(tool: &str, e: std::io::Error) -> TrainError {
    TrainError::Invalid(format!(
        "cannot run `{tool}` ({e}): --executor slurm needs the Slurm client commands (sbatch, \
         squeue, scancel) on this machine's PATH"
    ))
}

/// Every job and array task in the queue: `(id, state)`, array tasks as `JOB_TASK`.
fn squeue() -> Result<Vec<(String, String)>, TrainError> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i %T"])
        .output()
        .map_err(|e| slurm_missing("squeue", e))?;
    if !out.status.success() {
        return Err(TrainError::Invalid(format!(
            "squeue failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(' ')?;
            Some((id.to_string(), state.trim().to_string()))
        })
        .collect())
}

/// Where one training run of the pipeline stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStatus {
    /// `NAME` or `NAME fold I`.
    pub name: String,
    /// `done`, `running`, `waiting`, `stopped` (a checkpoint, nothing queued), `failed` or
    /// `not started`.
    pub state: String,
    /// The Slurm job (`JOB_TASK`), when it has one queued.
    pub job: Option<String>,
    /// What else there is to say: the epochs done, or the end of a failed run's log.
    pub detail: String,
}

/// The state of every run of the pipeline in `out` (its `pipeline.toml`), and of the final job:
/// from the run folders, and from Slurm's queue when `slurm/jobs.json` exists.
pub fn pipeline_status(out: &Path) -> Result<(Vec<RunStatus>, String), TrainError> {
    let resolved = out.join(outputs::RESOLVED);
    let text = std::fs::read_to_string(&resolved).map_err(|source| TrainError::Io {
        path: resolved.clone(),
        source,
    })?;
    let p: ResolvedPipeline = toml::from_str(&text).map_err(|e| TrainError::Config {
        path: resolved.clone(),
        key: String::new(),
        message: e.to_string(),
    })?;
    let state_path = out.join(SLURM_DIR).join(JOBS);
    let state: Option<SlurmState> = if state_path.is_file() {
        Some(read_json(&state_path)?)
    } else {
        None
    };
    let queue = match &state {
        Some(_) => squeue()?,
        None => Vec::new(),
    };
    // The newest task of each run, and the newest final job.
    let mut task_of = std::collections::HashMap::new();
    for s in state.iter().flat_map(|s| &s.submissions) {
        if let Some(array) = &s.array_job {
            for (i, t) in s.tasks.iter().enumerate() {
                task_of.insert(t.clone(), format!("{array}_{i}"));
            }
        }
    }
    let in_queue = |job: &str| {
        queue
            .iter()
            .find(|(id, _)| id == job)
            .map(|(_, s)| s.clone())
    };
    let mut runs = Vec::new();
    for i in 0..p.members.len() {
        let m = &p.members[i];
        let member_done = is_done(&member_dir(out, m));
        for u in member_units(&p, i) {
            let name = u.name(&p);
            let dir = unit_dir(out, m, u.fold);
            let job = task_of.get(&name).cloned();
            let queued = job.as_deref().and_then(in_queue);
            let epochs = std::fs::read_to_string(dir.join(files::METRICS))
                .map_or(0, |t| t.lines().count().saturating_sub(1));
            let progress = format!("{epochs}/{} epochs", m.config.train.epochs);
            let (state, detail) = if member_done || is_done(&dir) {
                ("done", String::new())
            } else if let Some(q) = &queued {
                match q.as_str() {
                    "RUNNING" | "COMPLETING" => ("running", progress),
                    _ => ("waiting", format!("{} ({progress})", q.to_lowercase())),
                }
            } else if let Some(job) = &job {
                // Its task left the queue unfinished: an error, a time limit or a cancel.
                let log = dir.join(outputs::MEMBER_LOG);
                let end = format!("end of {}:\n{}", log.display(), tail(&log, 5));
                if dir.join(files::LAST).is_file() {
                    let what = format!("{progress}, a checkpoint to resume from; job {job} left");
                    ("stopped", format!("{what} the queue unfinished; {end}"))
                } else {
                    ("failed", format!("job {job}; {end}"))
                }
            } else if dir.join(files::LAST).is_file() {
                (
                    "stopped",
                    format!("{progress}; a checkpoint to resume from"),
                )
            } else {
                ("not started", String::new())
            };
            runs.push(RunStatus {
                name,
                state: state.into(),
                job: job.filter(|_| queued.is_some()),
                detail,
            });
        }
    }
    let report =
        if out.join(outputs::REPORT_JSON).is_file() && runs.iter().all(|r| r.state == "done") {
            "done".to_string()
        } else {
            match state.as_ref().and_then(|s| s.submissions.last()) {
                Some(s) => match in_queue(&s.final_job) {
                    Some(q) => format!("{} (job {})", q.to_lowercase(), s.final_job),
                    None => format!(
                        "not written (final job {} is no longer queued)",
                        s.final_job
                    ),
                },
                None => "not written".into(),
            }
        };
    Ok((runs, report))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words_survive_quotes() {
        assert_eq!(super::quote("a b"), "'a b'");
        assert_eq!(super::quote("it's"), r"'it'\''s'");
    }
}
