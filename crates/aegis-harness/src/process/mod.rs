//! The processes the harness runs: spawning, reaping, output, and the table that tracks them.

pub mod input;
pub mod output;
pub mod reaper;
pub mod spawn;
pub mod table;
pub mod terminal;
pub mod user;
