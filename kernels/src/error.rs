//! The one error type of the kernels crate.

use thiserror::Error;

/// What can go wrong when a kernel is called with bad arguments.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    /// Two operands disagree on a dimension that must match.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch {
        /// The kernel that was called.
        op: &'static str,
        /// Which dimensions disagree, with their values.
        detail: String,
    },
    /// A buffer is too short for the shape and strides it is described with.
    #[error("buffer too small for {what}: needs {needed} elements, has {actual}")]
    BufferTooSmall {
        /// Which operand.
        what: &'static str,
        /// Elements the shape and strides address.
        needed: usize,
        /// Elements the buffer holds.
        actual: usize,
    },
    /// A size computation overflows `usize`.
    #[error("size overflow in {what}: {detail}")]
    SizeOverflow {
        /// Which operand or quantity.
        what: &'static str,
        /// The values that overflowed.
        detail: String,
    },
    /// An argument has a value the kernel does not accept.
    #[error("invalid argument {name} = {value}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The requested instruction set is not available on this machine.
    #[error("instruction set {0} is not available on this machine")]
    IsaUnavailable(&'static str),
}
