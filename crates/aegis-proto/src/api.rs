//! REST API bodies of `aegisd` (filled in with the daemon).
