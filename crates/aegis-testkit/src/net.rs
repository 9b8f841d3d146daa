//! Loopback ports for tests and benchmarks that expose or serve something.

use std::net::TcpListener;

/// A TCP port free on 127.0.0.1 right now: bound to port 0 and released at once, for the daemon
/// or a test server to bind next.
///
/// # Panics
/// When no loopback port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_can_be_bound_again() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the free port, bound again");
    }
}
