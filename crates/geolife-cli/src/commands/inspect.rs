//! `geolife inspect <DATA>`: validates a dataset root and reports what it holds per split, or
//! prints one survey's record as JSON (`--split S --survey ID --json`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use geolife_data::inspect::{
    InspectOptions, Report, id_list, inspect, parse_env_groups, survey_record,
};
use geolife_data::{Dataset, DatasetOptions, NanPolicy, Split};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Dataset root in the official GLC24 layout (holds GLC24_PA_metadata_train.csv).
    pub data: PathBuf,
    /// Only this split (train or test). With --survey: the split to look in (default: the
    /// one whose metadata holds the id).
    #[arg(long)]
    pub split: Option<String>,
    /// Print this survey's full record as JSON (non-finite numbers as "NaN", "inf", "-inf").
    #[arg(long)]
    pub survey: Option<u64>,
    /// Print JSON (the survey record, or the whole report).
    #[arg(long)]
    pub json: bool,
    /// Check the files of only N surveys per split (evenly spaced); default all.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Environmental groups, comma-separated (bioclim, elevation, human-footprint,
    /// soilgrids, landcover, monthly-climate) or `seed` for the seed's 46 features.
    #[arg(long, default_value = "seed")]
    pub env_groups: String,
    /// Non-finite cube values: `zero` (the seed's nan_to_num) or `keep`.
    #[arg(long, default_value = "zero")]
    pub cube_nan: String,
    /// Also fail (exit 1) when any part a full run needs is absent: the test split, an
    /// environmental CSV, a survey's row in one, or a cube/patch file of a checked survey;
    /// or when an environmental CSV holds rows of surveys not in the metadata.
    #[arg(long)]
    pub strict: bool,
}

/// Exit code when files exist but fail to parse.
const EXIT_BAD_FILES: u8 = 2;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = DatasetOptions {
        env_groups: parse_env_groups(&args.env_groups)?,
        cube_nan: args.cube_nan.parse::<NanPolicy>()?,
    };
    let split = args.split.as_deref().map(str::parse::<Split>).transpose()?;
    let ds = Dataset::open(&args.data, opts)
        .with_context(|| format!("cannot inspect {}", args.data.display()))?;

    if let Some(id) = args.survey {
        let split = match split {
            Some(s) => s,
            None => {
                // Look the id up in every split that has metadata; it must be in exactly one.
                let found: Vec<Split> = Split::ALL
                    .into_iter()
                    .filter(|&s| ds.metadata(s).is_ok_and(|m| m.index_of(id).is_some()))
                    .collect();
                match found.as_slice() {
                    [one] => *one,
                    [] => bail!(
                        "survey {id} is in neither the train nor the test metadata of {}",
                        args.data.display()
                    ),
                    _ => bail!("survey {id} is in both splits: pass --split train|test"),
                }
            }
        };
        let rec = survey_record(&ds, split, id)?;
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(ExitCode::SUCCESS);
    }

    let iopts = InspectOptions {
        sample: args.sample,
        splits: split.map(|s| vec![s]).unwrap_or_default(),
    };
    let total: usize = iopts
        .splits
        .iter()
        .copied()
        .chain(if iopts.splits.is_empty() {
            Split::ALL.to_vec()
        } else {
            vec![]
        })
        .filter_map(|s| ds.surveys(s).ok())
        .map(|s| args.sample.map_or(s.len(), |n| n.min(s.len())))
        .sum();
    let bar = ProgressBar::new(total as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(
                "checking files {bar:40} {pos}/{len} surveys ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let report = inspect(&ds, &iopts, &|| bar.inc(1));
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let incomplete = report.incomplete();
    if args.strict && !incomplete.is_empty() {
        bail!(
            "{} is incomplete for a full run (--strict):\n  {}\nfix: unzip the missing archives of the Kaggle download into the dataset root (layout: GLC24.md §2)",
            args.data.display(),
            incomplete.join("\n  ")
        );
    }
    if report.n_failures() > 0 {
        eprintln!(
            "error: {} file(s) failed to parse or hold conflicting rows (listed above); fix or re-download them, or pass --skip-bad to `geolife prepare` to leave those surveys out",
            report.n_failures()
        );
        return Ok(ExitCode::from(EXIT_BAD_FILES));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &Report) {
    println!("dataset {}", r.root);
    println!(
        "presence-only metadata: {}",
        if r.presence_only_present {
            "present"
        } else {
            "absent"
        }
    );
    for s in &r.splits {
        println!();
        if !s.present {
            println!("[{}] metadata absent", s.split);
            continue;
        }
        let species = s
            .species
            .map_or(String::new(), |n| format!(", {n} species"));
        println!(
            "[{}] {} surveys, {} rows ({} duplicate survey-species rows){species}",
            s.split, s.surveys, s.rows, s.duplicate_rows
        );
        if s.conflicting_surveys > 0 {
            println!(
                "  metadata: {} surveys with rows that disagree (FAILED below)",
                s.conflicting_surveys
            );
        }
        for e in &s.env {
            if e.present {
                let missing = if e.missing_surveys.is_empty() {
                    String::new()
                } else {
                    format!(" ({}; their features are NaN)", id_list(&e.missing_surveys))
                };
                println!(
                    "  env {:<16} present, {} surveys without a row{missing}",
                    e.group, e.missing_rows
                );
                if e.exact_duplicate_rows > 0 {
                    println!(
                        "      {} exact duplicate rows (same survey, same values) ignored",
                        e.exact_duplicate_rows
                    );
                }
                if e.unknown_survey_rows > 0 {
                    let ids: Vec<u64> = e.unknown_survey_examples.iter().map(|x| x.0).collect();
                    println!(
                        "      {} rows of surveys not in the {} metadata ignored ({})",
                        e.unknown_survey_rows,
                        s.split,
                        id_list(&ids)
                    );
                }
                if e.conflicting_surveys > 0 {
                    println!(
                        "      {} surveys with rows that disagree (FAILED below)",
                        e.conflicting_surveys
                    );
                }
            } else {
                println!("  env {:<16} ABSENT (expected at {})", e.group, e.path);
            }
        }
        let noisy: Vec<_> = s
            .features
            .iter()
            .filter(|f| f.nan + f.pos_inf + f.neg_inf > 0)
            .collect();
        if noisy.is_empty() && !s.features.is_empty() {
            println!("  tabular: {} features, no NaN/inf", s.features.len());
        } else if !noisy.is_empty() {
            println!(
                "  tabular: {} features; non-finite values:",
                s.features.len()
            );
            for f in noisy {
                println!(
                    "    {:<32} NaN {:>7}  +inf {:>7}  -inf {:>7}",
                    f.name, f.nan, f.pos_inf, f.neg_inf
                );
            }
        }
        println!("  files of {} checked surveys:", s.checked);
        for m in &s.modalities {
            println!(
                "    {:<8} present {:>7} / {}   failed {}",
                m.modality, m.present, s.checked, m.failed
            );
        }
        for f in s.failures.iter().take(20) {
            println!("  FAILED [{}] {}", f.kind, f.reason);
        }
        if s.failures.len() > 20 {
            println!(
                "  ... and {} more failures (use --json for all)",
                s.failures.len() - 20
            );
        }
    }
}
