//! One module per command; each has an `Args` (clap) and an async `run` returning the exit code.

pub mod cp;
pub mod doctor;
pub mod down;
pub mod e2b;
pub mod exec;
pub mod image;
pub mod instance;
pub mod kit;
pub mod logs;
pub mod mcp;
pub mod process;
pub mod run;
pub mod secret;
pub mod status;
pub mod terminal;
pub mod up;
pub mod workspace;
