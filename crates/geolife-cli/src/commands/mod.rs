//! One module per subcommand: each has `Args` (clap) and `run(Args) -> Result<ExitCode>`.

pub mod bench;
pub mod calibrate;
pub mod ensemble;
pub mod evaluate;
pub mod inspect;
pub mod labels;
pub mod prepare;
pub mod submit;
pub mod synth;

#[cfg(feature = "dl")]
pub mod demo;
#[cfg(feature = "dl")]
pub mod export_weights;
#[cfg(feature = "dl")]
pub mod import_weights;
#[cfg(feature = "dl")]
pub mod predict;
#[cfg(feature = "dl")]
pub mod train;
