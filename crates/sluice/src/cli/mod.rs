//! Commands of the `sluice` binary that are more than a few lines, kept out of `main.rs`.
//!
//! - [`queue`]: `sluice queue`, the queue of a running relay through its admin interface.

pub mod queue;
