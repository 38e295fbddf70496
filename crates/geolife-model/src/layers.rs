//! Small shared layers.
