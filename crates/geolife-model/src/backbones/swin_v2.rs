//! Placeholder: written by the transformer helper.
