//! Offline tests: nothing but this crate and the machine (no emulator, no network service): the
//! whole-pipeline simulation under paused time, the lease edges on the simulated queue, the
//! filter against EventBridge's cases and its fuzz and allocation checks, configuration errors
//! and the `check` golden file, and the structure of `src/` (layers, cycles, function lengths).
//! One test binary; `cargo test --test offline simulation::` runs one module.

mod config_errors;
mod filter_alloc;
mod filter_fuzz;
mod filter_patterns;
mod image_recipe;
mod import_esm;
mod lease_edges;
mod simulation;
mod structure;
