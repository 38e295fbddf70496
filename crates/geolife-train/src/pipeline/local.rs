//! Members in parallel on one machine (`geolife pipeline --jobs N`): each member that is not
//! done runs as a child process, `geolife pipeline ... --member NAME`, up to N at once. A child
//! is pinned to one device of `--devices` (`wgpu:I` selects GPU I through cubecl's
//! `CUBECL_WGPU_DEFAULT_DEVICE`); on the CPU the cores are divided between the children
//! (`RAYON_NUM_THREADS`). Each child writes what the sequential run writes, in its own member
//! folder, so the blend, policy, submission and report that follow are the same bytes. Its
//! output goes to `members/<name>/member.log`; the parent shows one line per member.
//!
//! A child that fails (or cannot be started) does not stop the others; the parent reports every
//! failure with the end of its log once the rest are done. The children are in their own
//! process group, so a terminal's Ctrl-C reaches only the parent, which passes SIGTERM or SIGINT
//! on once: every child writes its checkpoint and exits, and the same command continues each
//! member where it stopped. A child also gets SIGTERM when the parent dies (Linux:
//! `PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::members::{MemberRecord, Unit, member_dir, member_units, pending_units, unit_dir};
use super::{PipelineOptions, outputs};
use crate::config::DeviceKind;
use crate::error::TrainError;
use crate::trainer::run_dir::read_json;

/// How to run the members as child processes.
#[derive(Debug, Clone)]
pub struct LocalJobs {
    /// Members at once (at least 1).
    pub jobs: usize,
    /// Devices handed to the children in turn; empty: each member's own `train.device`.
    pub devices: Vec<DeviceSlot>,
    /// The geolife binary.
    pub program: PathBuf,
    /// The arguments that make `program` this `geolife pipeline` (same config, data, out,
    /// cache, `--set`s); `--member NAME` is appended.
    pub args: Vec<OsString>,
}

/// One entry of `--devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSlot {
    /// The CPU (`flex`): cores divided between the children.
    Cpu,
    /// The wgpu adapter of this index among the discrete GPUs (`wgpu:I`); `wgpu` alone is 0.
    Gpu(usize),
}

impl std::str::FromStr for DeviceSlot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("device `{s}`: expected `flex`, `wgpu` or `wgpu:INDEX`");
        match s.trim() {
            "flex" | "cpu" => Ok(DeviceSlot::Cpu),
            "wgpu" => Ok(DeviceSlot::Gpu(0)),
            other => match other.strip_prefix("wgpu:") {
                Some(i) => i.parse().map(DeviceSlot::Gpu).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl DeviceSlot {
    /// Parses `flex`, `wgpu:0,wgpu:1`, ...
    pub fn parse_list(s: &str) -> Result<Vec<DeviceSlot>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }
}

/// A running child.
struct Running {
    /// The member, and its fold: `name` or `name fold I`.
    name: String,
    slot: usize,
    child: Child,
    log: PathBuf,
    last_line: String,
}

/// Trains every member that is not done through child processes, `jobs.jobs` at once; then
/// every member's record, in the members' order.
pub(super) fn train_members_local(
    opts: &PipelineOptions,
    jobs: &LocalJobs,
) -> Result<Vec<MemberRecord>, TrainError> {
    let p = &opts.pipeline;
    let n = p.members.len();
    // Every run not done: a member's, or each fold's of a k-fold member.
    let mut waiting: std::collections::VecDeque<Unit> = pending_units(&opts.out, p).into();
    let width = jobs.jobs.max(1).min(waiting.len().max(1));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / width).max(1);
    tracing::info!(
        target: crate::PROGRESS,
        "{} runs of {n} members to train, {width} at once{}",
        waiting.len(),
        if jobs.devices.is_empty() {
            String::new()
        } else {
            format!(" on {:?}", jobs.devices)
        }
    );
    let bars = (opts.progress == crate::trainer::Progress::Auto && std::io::stderr().is_terminal())
        .then(indicatif::MultiProgress::new);
    let mut running: Vec<(Running, Option<indicatif::ProgressBar>)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut free: Vec<usize> = (0..width).rev().collect();
    let mut forwarded = None;
    loop {
        if let Some(signal) = crate::interrupt::requested()
            && forwarded.is_none()
        {
            waiting.clear();
            for (r, _) in &running {
                send_signal(&r.child, signal);
            }
            forwarded = Some(signal);
        }
        while let (Some(&unit), Some(slot)) = (waiting.front(), free.pop()) {
            waiting.pop_front();
            let r = match spawn(opts, jobs, unit, slot, threads) {
                Ok(r) => r,
                Err(e) => {
                    failed.push(format!(
                        "cannot start a run: {}",
                        geolife_io::error_text(&e)
                    ));
                    free.push(slot);
                    continue;
                }
            };
            let bar = bars.as_ref().map(|b| {
                let bar = b.add(indicatif::ProgressBar::new_spinner());
                bar.set_prefix(r.name.clone());
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}")
                        .expect("a valid template"),
                );
                bar
            });
            running.push((r, bar));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let (r, bar) = &mut running[i];
            let name = r.name.clone();
            if let Some(line) = last_line(&r.log)
                && line != r.last_line
            {
                match bar {
                    Some(b) => b.set_message(line.clone()),
                    None => tracing::info!(target: crate::PROGRESS, "`{name}`: {line}"),
                }
                r.last_line = line;
            }
            let status = match r.child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Err(e) => Err(e),
            };
            let (r, bar) = running.swap_remove(i);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            free.push(r.slot);
            match status {
                Ok(s) if s.success() => {
                    tracing::info!(target: crate::PROGRESS, "`{name}`: done");
                }
                // Stopped by the signal passed on: it checkpointed, not a failure.
                Ok(_) if forwarded.is_some() => {}
                Ok(s) => failed.push(format!(
                    "`{name}` failed ({s}); the end of {}:\n{}",
                    r.log.display(),
                    tail(&r.log, 10)
                )),
                Err(e) => failed.push(format!("`{name}`: cannot wait for its process: {e}")),
            }
        }
    }
    if let Some(signal) = forwarded {
        for f in &failed {
            tracing::warn!("{f}");
        }
        return Err(TrainError::Interrupted {
            signal,
            run: opts.out.join(outputs::MEMBERS),
        });
    }
    if !failed.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} runs failed (the others are done; run the same command again to retry): {}",
            failed.len(),
            failed.join("\n")
        )));
    }
    (0..n)
        .map(|i| match member_units(p, i)[..] {
            [Unit { fold: None, .. }] => {
                read_json(&member_dir(&opts.out, &p.members[i]).join(outputs::MEMBER_DONE))
            }
            _ => super::members::assemble_folds(opts, i),
        })
        .collect()
}

/// Starts run `unit` on `slot`'s device, its output appended to its folder's `member.log`.
fn spawn(
    opts: &PipelineOptions,
    jobs: &LocalJobs,
    unit: Unit,
    slot: usize,
    threads: usize,
) -> Result<Running, TrainError> {
    let m = &opts.pipeline.members[unit.member];
    let dir = unit_dir(&opts.out, m, unit.fold);
    let name = unit.name(&opts.pipeline);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let log = dir.join(outputs::MEMBER_LOG);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(&log))?;
    let mut cmd = Command::new(&jobs.program);
    cmd.args(&jobs.args)
        .arg("--member")
        .arg(&m.name)
        .args(unit.fold.map(|f| format!("--fold={f}")))
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(io(&log))?)
        .stderr(file);
    let device = jobs.devices.get(slot % jobs.devices.len().max(1)).copied();
    // A member trains on its own `train.device`: a GPU slot picks which GPU for a wgpu member;
    // a CPU member gets its share of the cores whatever the slot.
    match (device, m.config.train.device) {
        (_, DeviceKind::Flex) => {
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
        }
        (Some(DeviceSlot::Gpu(i)), DeviceKind::Wgpu) => {
            cmd.env("CUBECL_WGPU_DEFAULT_DEVICE", format!("DiscreteGpu({i})"));
        }
        (_, DeviceKind::Wgpu) => {}
    }
    die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(io(&jobs.program))?;
    tracing::info!(
        target: crate::PROGRESS,
        "`{name}`: started (pid {}{}), log {}",
        child.id(),
        match device {
            Some(DeviceSlot::Gpu(i)) => format!(", GPU {i}"),
            _ if m.config.train.device == DeviceKind::Flex => format!(", {threads} threads"),
            _ => String::new(),
        },
        log.display()
    );
    Ok(Running {
        name,
        slot,
        child,
        log,
        last_line: String::new(),
    })
}

/// Linux: the child gets SIGTERM when the parent dies (even by SIGKILL), so it checkpoints
/// and exits instead of training on unseen.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a terminal's Ctrl-C reaches the parent only, which passes it
        // on once (a second SIGINT would end the child before its checkpoint).
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl: no signal will come, so do not start.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent process has exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Passes a stop request on to a child.
fn send_signal(child: &Child, signal: i32) {
    #[cfg(unix)]
    // SAFETY: kill has no memory effects; the pid is our own unreaped child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    #[cfg(not(unix))]
    let _ = (child, signal);
}

/// The last non-empty line of a log (its final 4 KiB), if any.
fn last_line(path: &Path) -> Option<String> {
    tail(path, 1).lines().last().map(str::to_string)
}

/// The last `n` non-empty lines of a log (from its final 16 KiB).
pub(super) fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::DeviceSlot;

    #[test]
    fn device_lists_parse() {
        assert_eq!(
            DeviceSlot::parse_list("wgpu:0,wgpu:1"),
            Ok(vec![DeviceSlot::Gpu(0), DeviceSlot::Gpu(1)])
        );
        assert_eq!(
            DeviceSlot::parse_list("flex, wgpu"),
            Ok(vec![DeviceSlot::Cpu, DeviceSlot::Gpu(0)])
        );
        let e = DeviceSlot::parse_list("cuda:0").unwrap_err();
        assert!(e.contains("`cuda:0`") && e.contains("wgpu:INDEX"), "{e}");
        assert!(DeviceSlot::parse_list("wgpu:x").is_err());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("m.log");
        std::fs::write(&log, "a\n\nb\nc\n\n").unwrap();
        assert_eq!(super::tail(&log, 2), "b\nc");
        assert_eq!(super::last_line(&log).as_deref(), Some("c"));
        assert_eq!(super::tail(&dir.path().join("none"), 3), "");
    }
}
