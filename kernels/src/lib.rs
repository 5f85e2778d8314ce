//! CPU SIMD kernels of accelmesh.
//!
//! This crate knows nothing of nodes or meshes: it multiplies matrices, convolves images and
//! applies elementwise functions as fast as the CPU allows. Every `unsafe` block of the project
//! lives here, each with the reason it is sound.
//!
//! Threading: kernels split their work with rayon on the *current* pool, so a caller that wants
//! a kernel on a share of the machine's cores runs it inside `pool.install(|| …)`.

pub mod buffer;
pub mod claim;
pub mod concat;
pub mod conv;
pub mod element;
pub mod elementwise;
pub mod error;
pub mod gemm;
pub mod isa;
mod math;
pub mod norm;
pub mod peak;
pub mod pool;
mod prefetch;

pub use element::Element;
pub use error::KernelError;
pub use gemm::{Epilogue, MatMut, MatRef, gemm, sgemm};
pub use isa::Isa;

/// Result type of every fallible kernel entry point.
pub type Result<T> = std::result::Result<T, KernelError>;
