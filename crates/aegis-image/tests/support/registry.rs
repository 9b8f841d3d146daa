//! A real docker-registry on loopback.
