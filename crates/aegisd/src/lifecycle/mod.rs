//! Instance lifecycle: booting guests, the per-instance actor and its state machine.

pub mod boot;
