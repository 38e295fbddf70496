//! One module per subcommand: each has `Args` (clap) and `run(Args) -> Result<ExitCode>`.

pub mod bench;
pub mod calibrate;
pub mod ensemble;
pub mod evaluate;
pub mod inspect;
pub mod labels;
pub mod map;
pub mod prepare;
pub mod prior;
pub mod submit;
pub mod synth;

#[cfg(feature = "dl")]
pub mod demo;
#[cfg(feature = "dl")]
pub mod export_weights;
#[cfg(feature = "dl")]
pub mod import_weights;
#[cfg(feature = "dl")]
pub mod pipeline;
#[cfg(feature = "dl")]
pub mod predict;
#[cfg(feature = "dl")]
pub mod train;

/// SIGTERM and SIGINT ask training to stop at its next optimiser step, after writing
/// `last.ckpt` ([`geolife_train::interrupt`]); the process then exits with 128 + the signal.
/// With `second_ends_at_once` a second signal ends it at once (a user pressing Ctrl-C twice);
/// a member's process of `pipeline --jobs` or a Slurm task does not take it, as it may get the
/// same stop twice (from its parent and from the terminal or Slurm) and must still checkpoint.
/// For the commands that train (`train`, `pipeline`, `demo`).
#[cfg(feature = "dl")]
pub fn stop_on_signals(second_ends_at_once: bool) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        if second_ends_at_once {
            // Runs first: a no-op until `seen` is set by an earlier signal.
            flag::register_conditional_shutdown(signal, 128 + signal, seen.clone())?;
        }
        flag::register(signal, seen.clone())?;
        flag::register_usize(signal, geolife_train::interrupt::flag(), signal as usize)?;
    }
    Ok(())
}

/// A clap value parser for a type with a fixed set of names (`FromStr`, e.g. strum's
/// `EnumString`): the parser itself refuses a wrong name and lists the valid ones, and
/// `--help` shows them.
pub fn named<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}
