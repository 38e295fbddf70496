//! Packed cache failure modes: leftover temporary folders, incomplete splits, another format
//! version, truncated files, corrupt JPEGs with and without `--skip-bad`, test without train.

mod cache_common;

use std::path::{Path, PathBuf};

use cache_common::{opts, pack, synth_into};
use geolife_data::Split;
use geolife_data::cache::{CacheError, PackedSplit, SplitOutcome};

/// The middle RGB patch of the train surveys (by id), found by walking the folder.
fn some_rgb_patch(root: &Path) -> (u64, PathBuf) {
    let mut found: Vec<(u64, PathBuf)> =
        walkdir::WalkDir::new(root.join("PA_Train_SatellitePatches_RGB"))
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let p = e.into_path();
                let id: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                (id, p)
            })
            .collect();
    found.sort();
    found.swap_remove(found.len() / 2)
}

#[test]
fn leftover_tmp_is_cleaned_and_incomplete_split_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let out = tmp.path().join("cache");
    // A folder left by a killed run (pid that cannot exist) and a split without manifest.
    let stale = out.join("train.tmp-4000000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("patches.u8"), b"junk").unwrap();
    std::fs::create_dir_all(out.join("train")).unwrap();
    std::fs::write(out.join("train/patches.u8"), b"junk").unwrap();
    match PackedSplit::open(&out, Split::Train) {
        Err(CacheError::Incomplete { path, .. }) => assert_eq!(path, out.join("train")),
        other => panic!("expected Incomplete, got {other:?}"),
    }
    match PackedSplit::open(&out, Split::Test) {
        Err(CacheError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }

    let r = pack(&root, &out, opts(&[Split::Train])).unwrap();
    assert_eq!(r[0].outcome, SplitOutcome::Packed);
    assert!(!stale.exists(), "stale temporary folder removed");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![".prepare.lock".to_string(), "train".to_string()]
    );
    assert_eq!(PackedSplit::open(&out, Split::Train).unwrap().len(), 40);

    // Removing the manifest makes the split incomplete again; prepare re-packs it.
    std::fs::remove_file(out.join("train/manifest.json")).unwrap();
    assert!(matches!(
        PackedSplit::open(&out, Split::Train),
        Err(CacheError::Incomplete { .. })
    ));
    let r = pack(&root, &out, opts(&[Split::Train])).unwrap();
    assert_eq!(r[0].outcome, SplitOutcome::Packed);
}

#[test]
fn version_mismatch_and_truncated_file_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let out = tmp.path().join("cache");
    pack(&root, &out, opts(&[Split::Train])).unwrap();
    let man = out.join("train/manifest.json");
    let text = std::fs::read_to_string(&man).unwrap();

    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["format_version"] = serde_json::json!(999);
    std::fs::write(&man, v.to_string()).unwrap();
    match PackedSplit::open(&out, Split::Train) {
        Err(e @ CacheError::Version { found: 999, .. }) => {
            assert!(e.to_string().contains("manifest.json"), "{e}");
        }
        other => panic!("expected Version, got {other:?}"),
    }
    // A manifest of another version is not "up to date": prepare replaces it.
    let r = pack(&root, &out, opts(&[Split::Train])).unwrap();
    assert_eq!(r[0].outcome, SplitOutcome::Packed);
    PackedSplit::open(&out, Split::Train).unwrap();

    // One byte less of patches.
    let patches = out.join("train/patches.u8");
    let len = std::fs::metadata(&patches).unwrap().len();
    assert_eq!(len, 40 * 4 * 128 * 128);
    let f = std::fs::File::options().write(true).open(&patches).unwrap();
    f.set_len(len - 1).unwrap();
    drop(f);
    match PackedSplit::open(&out, Split::Train) {
        Err(e @ CacheError::Length { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("patches.u8") && msg.contains(&len.to_string()),
                "{msg}"
            );
        }
        other => panic!("expected Length, got {other:?}"),
    }

    // Label offsets that do not end at the label count.
    pack(&root, &out, {
        let mut o = opts(&[Split::Train]);
        o.force = true;
        o
    })
    .unwrap();
    let off = out.join("train/label_offsets.u64");
    let mut bytes = std::fs::read(&off).unwrap();
    let n = bytes.len();
    bytes[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&off, bytes).unwrap();
    assert!(matches!(
        PackedSplit::open(&out, Split::Train),
        Err(CacheError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_jpeg_fails_naming_file_and_survey_or_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let (bad_id, bad_path) = some_rgb_patch(&root);
    std::fs::write(&bad_path, b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    let out = tmp.path().join("cache");

    let err = pack(&root, &out, opts(&[Split::Train])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&bad_id.to_string()), "{msg}");
    assert!(msg.contains(&bad_path.display().to_string()), "{msg}");
    assert!(!out.join("train").exists(), "no split after a failed run");
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".prepare.lock")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folder removed after a failure: {leftovers:?}"
    );

    let mut o = opts(&[Split::Train, Split::Test]);
    o.skip_bad = true;
    let r = pack(&root, &out, o).unwrap();
    assert_eq!((r[0].n, r[0].skipped), (39, 1));
    let train = PackedSplit::open(&out, Split::Train).unwrap();
    assert_eq!(train.len(), 39);
    assert_eq!(train.index_of(bad_id), None);
    let m = train.manifest();
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].survey_id, bad_id);
    assert_eq!(m.skipped[0].kind, "image");
    assert!(m.options.skip_bad);
    // The rows after the dropped survey are shifted, not left empty.
    let ids = train.survey_ids();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(train.patch(38).iter().any(|&v| v != 0));
}

#[test]
fn test_split_alone_needs_train_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let out = tmp.path().join("cache");
    match pack(&root, &out, opts(&[Split::Test])) {
        Err(e @ CacheError::NeedTrain(_)) => assert!(e.to_string().contains("--splits")),
        other => panic!("expected NeedTrain, got {other:?}"),
    }
    let mut o = opts(&[Split::Train]);
    o.chunk = 0;
    assert!(matches!(pack(&root, &out, o), Err(CacheError::Invalid(_))));
}

/// Progress that, when packing starts, reports it and waits to be released: holds a
/// `prepare` in the middle of its run.
struct Pause {
    inside: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl geolife_data::cache::PrepareProgress for Pause {
    fn start(&self, _split: Split, _total: usize) {
        if let Ok(tx) = self.inside.lock() {
            let _ = tx.send(());
        }
        if let Ok(rx) = self.release.lock() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(60));
        }
    }
}

#[test]
fn concurrent_prepare_fails_fast_on_the_lock_which_ends_with_its_run() {
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let out = tmp.path().join("cache");
    let lock = out.join(".prepare.lock");
    let me = std::process::id();

    // A first run, held inside its packing; a second one on the same cache meanwhile.
    let (inside_tx, inside_rx) = channel();
    let (release_tx, release_rx) = channel();
    let pause = Pause {
        inside: std::sync::Mutex::new(inside_tx),
        release: std::sync::Mutex::new(release_rx),
    };
    let first = {
        let (root, out) = (root.clone(), out.clone());
        std::thread::spawn(move || {
            geolife_data::cache::prepare(&root, &out, &opts(&[Split::Train]), &pause)
        })
    };
    inside_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the first prepare reaches its packing");
    let held = std::fs::read_to_string(&lock).expect("the running prepare holds the lock file");
    assert!(held.starts_with(&format!("pid={me}\n")), "{held}");
    let t0 = Instant::now();
    let err = pack(&root, &out, opts(&[Split::Train])).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "fails fast, no waiting"
    );
    match &err {
        CacheError::Locked { path, pid, .. } => {
            assert_eq!(path, &lock);
            assert_eq!(*pid, Some(me));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        lock.display().to_string(),
        format!("pid {me}"),
        "wait".into(),
    ] {
        assert!(msg.contains(&part), "`{part}` not in: {msg}");
    }
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        held,
        "the refused run leaves the holder's lock alone"
    );
    release_tx.send(()).unwrap();
    let r = first.join().unwrap().unwrap();
    assert_eq!(r[0].outcome, SplitOutcome::Packed);
    assert_eq!(PackedSplit::open(&out, Split::Train).unwrap().len(), 40);

    // The lock is released when a run ends, also when it fails: the next run takes it.
    let mut bad = opts(&[Split::Test]);
    bad.force = true;
    std::fs::remove_dir_all(out.join("train")).unwrap();
    assert!(matches!(
        pack(&root, &out, bad),
        Err(CacheError::NeedTrain(_))
    ));
    // A lock file left by a killed run (any text) is not held by anyone: it does not block.
    std::fs::write(&lock, "pid=4000000000\n").unwrap();
    let r = pack(&root, &out, opts(&[Split::Train])).unwrap();
    assert_eq!(r[0].outcome, SplitOutcome::Packed);
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("pid={me}\n") + &host_line(),
        "the lock file names its last holder"
    );

    // A lock held through another open file (as another process would) refuses the run, and
    // the message names the holder written in the file, even of another machine.
    std::fs::write(&lock, "pid=123\nhost=some-other-machine\n").unwrap();
    let holder = std::fs::File::open(&lock).unwrap();
    holder.try_lock().unwrap();
    match pack(&root, &out, opts(&[Split::Train])) {
        Err(e @ CacheError::Locked { pid: Some(123), .. }) => {
            assert!(
                e.to_string().contains("pid 123 on host some-other-machine"),
                "{e}"
            );
        }
        other => panic!("expected Locked by pid 123, got {other:?}"),
    }
    drop(holder);
    pack(&root, &out, opts(&[Split::Train])).unwrap();
}

/// The `host=` line this machine writes into a lock file (empty where the name is unknown).
fn host_line() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .map_or(String::new(), |h| format!("host={h}\n"))
}
