//! The report: one row per member, the prior and the ensemble (validation F1, the policy
//! chosen on validation, test F1 when test labels are known), written as `report.json`,
//! `report.md` and a bar plot. Recomputed from the members' files on every run.

use std::path::Path;

use geolife_metrics::{
    FitOptions, PolicyKind, ScoreFile, Solution, best_k, calibrate_all, samples_f1,
};
use serde::{Deserialize, Serialize};

use super::blend::{Blend, table_of};
use super::members::{FoldRecord, MemberRecord, MemberScores};
use super::{PipelineOptions, PolicySpec, outputs};
use crate::error::TrainError;
use crate::trainer::run_dir::write_json;
use crate::trainer::write_atomic;

/// One row of the report (a member or the ensemble).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportRow {
    pub name: String,
    /// Sentinel backbone (members) or `ensemble`.
    pub model: String,
    /// Weight in the blend (members).
    pub weight: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Validation samples-F1 of the best fixed K (and that K).
    pub val_f1_best_k: f64,
    pub best_k: usize,
    /// The policy kind chosen on this row's validation scores, what it chose, and its
    /// cross-validated F1 (and top-25's, for comparison).
    pub policy: String,
    pub policy_fitted: String,
    pub val_f1_policy_cv: f64,
    pub val_f1_top25_cv: f64,
    /// Test samples-F1 with that policy, when test labels were given.
    pub test_f1: Option<f64>,
}

/// The report (`report.json`; `report.md` is the same as a table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub members: Vec<ReportRow>,
    /// The location prior member (`[prior]`), blended with the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<ReportRow>,
    pub ensemble: ReportRow,
    /// k-fold members (`[validation] folds`): each fold's run, on its own fold. The member
    /// rows are then on the out-of-fold scores of every train survey.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<FoldRow>,
    /// Comparison rows (`[report] comparisons`), not blended into the submission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
    /// `fitted` or `fixed`.
    pub weights: String,
    pub n_val_surveys: usize,
    pub n_test_surveys: usize,
}

/// A comparison row (`[report] comparisons`, built by `compare`) and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    #[serde(flatten)]
    pub row: ReportRow,
    /// What the row is, in words.
    pub what: String,
    /// Whether the row uses location evidence (a prior source).
    pub location: bool,
}

/// One fold of a k-fold member in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FoldRow {
    pub member: String,
    #[serde(flatten)]
    pub fold: FoldRecord,
}

/// Evaluates score-file pairs into report rows with the pipeline's policy settings, against
/// the validation labels (and the test solution when given).
pub(super) struct RowEvaluator<'a> {
    labels: &'a Solution,
    test_solution: Option<&'a Solution>,
    spec: &'a PolicySpec,
    fit: FitOptions,
}

impl<'a> RowEvaluator<'a> {
    pub fn new(opts: &'a PipelineOptions, labels: &'a Solution) -> Self {
        let spec = &opts.pipeline.policy;
        RowEvaluator {
            labels,
            test_solution: opts.test_solution.as_ref(),
            spec,
            fit: FitOptions {
                min_k: spec.min_k,
                max_k: spec.max_k,
                ..FitOptions::default()
            },
        }
    }

    /// [`evaluate_row`] with these settings.
    pub fn row(
        &self,
        name: &str,
        model: &str,
        val: &ScoreFile,
        test: &ScoreFile,
    ) -> Result<(ReportRow, (geolife_metrics::Policy, PolicyKind)), TrainError> {
        evaluate_row(
            name,
            model,
            val,
            test,
            self.labels,
            self.test_solution,
            self.spec,
            &self.fit,
        )
    }
}

/// A report row for one score file pair (validation, test), and the policy chosen for it on
/// validation (with its kind); `test_f1` when the test labels are given.
#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate_row(
    name: &str,
    model: &str,
    val: &ScoreFile,
    test: &ScoreFile,
    labels: &Solution,
    test_solution: Option<&Solution>,
    spec: &PolicySpec,
    opts: &FitOptions,
) -> Result<(ReportRow, (geolife_metrics::Policy, PolicyKind)), TrainError> {
    // One rank table for the F1@K curve and every policy fit.
    let table = table_of(val, labels, spec.max_k.max(25));
    let (best_k, val_f1_best_k) = best_k(&table.f1_at_k_curve(spec.max_k));
    let (fitted, _skipped) =
        calibrate_all(&table, opts, spec.folds, spec.seed).map_err(TrainError::from)?;
    let chosen = spec.kind.pick(&fitted).ok_or_else(|| {
        TrainError::Invalid(format!(
            "{name}: policy `{}` could not be fitted on the validation scores",
            <&str>::from(spec.kind)
        ))
    })?;
    let top25 = fitted
        .iter()
        .find(|c| c.kind == PolicyKind::Top25)
        .map_or(0.0, |c| c.cv_f1);
    let test_f1 = match test_solution {
        Some(sol) => {
            let picks = chosen.policy.try_select(test).map_err(TrainError::from)?;
            Some(samples_f1(&picks, &sol.align(&test.survey_ids).truth))
        }
        None => None,
    };
    Ok((
        ReportRow {
            name: name.into(),
            model: model.into(),
            weight: None,
            best_epoch: None,
            val_f1_best_k,
            best_k,
            policy: chosen.kind.name().into(),
            policy_fitted: chosen.policy.describe(),
            val_f1_policy_cv: chosen.cv_f1,
            val_f1_top25_cv: top25,
            test_f1,
        },
        (chosen.policy.clone(), chosen.kind),
    ))
}

/// The report as a Markdown table.
pub fn report_markdown(r: &Report) -> String {
    let mut s = String::from("# geolife pipeline report\n\n");
    let split = if r.folds.is_empty() {
        "one split shared by every member"
    } else {
        "out-of-fold: every train survey, scored by the fold's run that did not train on it"
    };
    s.push_str(&format!(
        "{} validation surveys ({split}), {} test surveys; ensemble weights {}.\n\n",
        r.n_val_surveys, r.n_test_surveys, r.weights
    ));
    s.push_str(
        "| row | model | weight | best epoch | val F1 @ best K | policy | chosen | val F1 (policy, CV) | val F1 (top-25, CV) | test F1 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in r.members.iter().chain(&r.prior).chain([&r.ensemble]) {
        s.push_str(&markdown_row(row, None));
    }
    if !r.folds.is_empty() {
        s.push_str(
            "\nk-fold: each fold's run, validated on its own fold (the rows above score every \
             train survey with the run that did not train on it: out-of-fold):\n\n\
             | member | fold | validation surveys | best epoch | best validation F1 |\n\
             |---|---|---|---|---|\n",
        );
        for f in &r.folds {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} |\n",
                f.member,
                f.fold.fold,
                f.fold.n_val,
                f.fold.best_epoch.map_or("-".into(), |e| e.to_string()),
                f.fold.best_val_f1
            ));
        }
    }
    if !r.comparisons.is_empty() {
        s.push_str(
            "\nComparisons (policy fitted on validation as above; not in the blend or the submission):\n\n\
             | row | what | location evidence | val F1 @ best K | policy | chosen | val F1 (policy, CV) | val F1 (top-25, CV) | test F1 |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &r.comparisons {
            s.push_str(&markdown_row(&c.row, Some((&c.what, c.location))));
        }
    }
    s.push_str(
        "\nWall times are in timings.json (they differ between runs; everything here does not).\n",
    );
    s
}

/// One table row: a member-table row, or (with `what`) a comparison-table row.
fn markdown_row(row: &ReportRow, what: Option<(&str, bool)>) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let lead = match what {
        None => format!(
            "{} | {} | {}",
            row.model,
            opt(row.weight, 3),
            row.best_epoch.map_or("-".into(), |e| e.to_string())
        ),
        Some((what, location)) => {
            format!("{what} | {}", if location { "yes" } else { "no" })
        }
    };
    format!(
        "| {} | {lead} | {:.4} (K={}) | {} | {} | {:.4} | {:.4} | {} |\n",
        row.name,
        row.val_f1_best_k,
        row.best_k,
        row.policy,
        row.policy_fitted,
        row.val_f1_policy_cv,
        row.val_f1_top25_cv,
        opt(row.test_f1, 4),
    )
}

fn plot_report(path: &Path, r: &Report) -> Result<(), String> {
    use plotters::style::{BLUE, GREEN, RGBColor};
    let rows: Vec<&ReportRow> = r
        .members
        .iter()
        .chain(&r.prior)
        .chain([&r.ensemble])
        .collect();
    let labels: Vec<String> = rows.iter().map(|row| row.name.clone()).collect();
    let mut series: Vec<(&str, RGBColor, Vec<Option<f64>>)> = vec![(
        "validation F1 (policy, CV)",
        BLUE,
        rows.iter().map(|row| Some(row.val_f1_policy_cv)).collect(),
    )];
    if rows.iter().any(|row| row.test_f1.is_some()) {
        series.push((
            "test F1",
            GREEN,
            rows.iter().map(|row| row.test_f1).collect(),
        ));
    }
    crate::plot::plot_bars(
        path,
        "members and their ensemble: samples-F1",
        &labels,
        &series,
    )
}

/// The report's rows, and the ensemble's policy (with its kind) for the submission.
pub(super) struct Rows {
    pub members: Vec<ReportRow>,
    pub prior: Option<ReportRow>,
    pub ensemble: ReportRow,
    pub policy: (geolife_metrics::Policy, PolicyKind),
}

/// Fits a policy on each member's, the prior's and the blend's validation scores (the
/// blend's is the submission's) and evaluates it; one row each, with the blend weights.
pub(super) fn evaluate_rows(
    opts: &PipelineOptions,
    scores: &MemberScores,
    labels: &Solution,
    records: &[MemberRecord],
    blend: &Blend,
) -> Result<Rows, TrainError> {
    let p = &opts.pipeline;
    let eval = RowEvaluator::new(opts, labels);
    let row = |name: &str, model: &str, val: &ScoreFile, test: &ScoreFile| {
        eval.row(name, model, val, test)
    };
    let mut members = Vec::with_capacity(p.members.len());
    for (((m, v), t), r) in p
        .members
        .iter()
        .zip(&scores.val)
        .zip(&scores.test)
        .zip(records)
    {
        let (r0, _) = row(&m.name, m.config.model.backbone.name(), v, t)?;
        members.push(ReportRow {
            best_epoch: r.best_epoch,
            ..r0
        });
    }
    for (r, w) in members.iter_mut().zip(&blend.weights) {
        r.weight = Some(*w);
    }
    let prior = match &p.prior {
        Some(spec) => {
            let m = p.members.len();
            let model = format!("prior ({})", spec.sources());
            let (r0, _) = row(
                outputs::PRIOR_MEMBER,
                &model,
                &scores.val[m],
                &scores.test[m],
            )?;
            Some(ReportRow {
                weight: Some(blend.weights[m]),
                ..r0
            })
        }
        None => None,
    };
    let (ensemble, policy) = row("ensemble", "ensemble", &blend.val, &blend.test)?;
    Ok(Rows {
        members,
        prior,
        ensemble,
        policy,
    })
}

/// Writes `report.json` and `report.md`, and `report.png` when it can be drawn (else a
/// warning: the plot is not part of the result).
pub(super) fn write_report(out: &Path, report: &Report) -> Result<(), TrainError> {
    write_json(&out.join(outputs::REPORT_JSON), report)?;
    write_atomic(
        &out.join(outputs::REPORT_MD),
        report_markdown(report).as_bytes(),
    )?;
    if let Err(e) = plot_report(&out.join(outputs::REPORT_PNG), report) {
        tracing::warn!("no report plot: {e}");
    }
    Ok(())
}
