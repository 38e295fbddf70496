//! geolife-io: file plumbing shared by the geolife crates (atomic writes, byte-reproducible
//! safetensors headers, the safe torch-file reader), below every other geolife crate so that
//! none of them depends on geolife-data only for these. No tensor library.

/// The `tracing` target of progress lines (a pipeline member started or done, the epoch lines
/// of a run without a progress bar): the CLI prints them on stdout; library code never prints.
pub const PROGRESS: &str = "geolife::progress";

pub mod atomic;
pub mod reproducible;
pub mod torchfile;

/// An error and its sources joined by ": ", for the places that keep an error as text (skip
/// reports, run logs): each geolife error's Display says only its own part, so its OS or
/// parser cause is in [`std::error::Error::source`], not in its message.
pub fn error_text(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("data/x.pt")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_text_joins_the_sources() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::error_text(&e), "data/x.pt: disk full");
    }
}
