//! Host side of the JSON-RPC control channel to a guest harness: bounded framing, the demuxer
//! (one receive loop routing responses to callers and notifications to a sink) and typed calls.

mod channel;
mod framing;

pub use channel::{
    ControlChannel, ControlError, NotificationSink, CONTROL_CALL_TIMEOUT, EXIT_RESERVE,
};
pub use framing::{FrameReader, ReadFrame};
