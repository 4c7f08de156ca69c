//! placeholder while the skeleton builds
