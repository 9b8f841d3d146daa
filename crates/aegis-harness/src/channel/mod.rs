//! The control channel to the host: transports, framing, and the reader and writer tasks.

pub mod framing;
pub mod reader;
pub mod transport;
pub mod writer;
