//! Assembles OCI images (config, manifest, index) from layers.
