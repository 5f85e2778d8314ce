//! accelmesh
