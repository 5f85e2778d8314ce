//! The one error type of the `accelmesh` crate.

use accelmesh_kernels::KernelError;
use thiserror::Error;

/// Result type of every fallible function of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in accelmesh; every message names the value at fault.
#[derive(Debug, Error)]
pub enum Error {
    /// A kernel refused its arguments.
    #[error("kernel error: {0}")]
    Kernel(#[from] KernelError),

    /// A shape is invalid on its own or does not fit the operands it is used with.
    #[error("shape error in {context}: {detail}")]
    Shape {
        /// Where the shape was used (an op, a constructor).
        context: String,
        /// What is wrong, with the values.
        detail: String,
    },

    /// A size computation (element count, flops, bytes) overflows.
    #[error("size overflow in {context}: {detail}")]
    Overflow {
        /// Which quantity overflowed.
        context: String,
        /// The values that overflowed.
        detail: String,
    },

    /// Operands have element types the operation does not accept together.
    #[error("dtype mismatch in {context}: {detail}")]
    DType {
        /// Where the dtypes met (an op, an accessor).
        context: String,
        /// Which dtypes were found and which were expected.
        detail: String,
    },

    /// A dtype name that is not one of `f32`, `f16`, `bf16`.
    #[error("unknown dtype `{0}`: expected one of f32, f16, bf16")]
    UnknownDType(String),

    /// An op was given the wrong number of inputs.
    #[error("{op} expects {expected} inputs, got {got}")]
    Arity {
        /// The op's name.
        op: &'static str,
        /// How many inputs it accepts, in words (`2`, `2 or 3`).
        expected: &'static str,
        /// How many it was given.
        got: usize,
    },

    /// A `--nodes` spec that does not parse or asks for nothing.
    #[error("invalid node spec `{spec}`: {reason}")]
    Spec {
        /// The offending spec entry as written.
        spec: String,
        /// Why it is refused.
        reason: String,
    },

    /// The controller refused a job it can never run as asked.
    #[error("job refused: {reason}")]
    Refused {
        /// Why (names the values at fault).
        reason: String,
    },

    /// A value (benchmark shape, size, count) that does not parse or is out of range.
    #[error("invalid {what} `{value}`: {reason}")]
    Parse {
        /// What the value was meant to be.
        what: &'static str,
        /// The value as written.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// A device failed to start or to run an op.
    #[error("device {device}: {detail}")]
    Device {
        /// The device id (`cpu0`) or kind.
        device: String,
        /// What failed.
        detail: String,
    },

    /// A model uses an operator, or an operator feature, that accelmesh does not implement.
    #[error("node `{node}`: operator {op} (opset {opset}) is not supported: {detail}")]
    Unsupported {
        /// The node's name (or a stand-in naming its operator and first output).
        node: String,
        /// The operator (`Conv`, `com.microsoft.Gelu`).
        op: String,
        /// The operator-set version of the operator's domain.
        opset: i64,
        /// What exactly is not supported (an attribute, its value, an input type).
        detail: String,
    },

    /// A job file (`accelmesh run`) that does not parse or does not validate.
    #[error("{path}:{line}: {field}: {detail}")]
    Job {
        /// The job file as given.
        path: String,
        /// The line at fault (1-based).
        line: usize,
        /// The field at fault, with its workload (``workload 2 (resnet), field `dtype` ``).
        field: String,
        /// What is wrong, with the value.
        detail: String,
    },

    /// Reading or writing a stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A [`Error::Shape`] error.
    pub fn shape(context: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// A [`Error::Overflow`] error.
    pub fn overflow(context: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Overflow {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// A [`Error::DType`] error.
    pub fn dtype(context: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::DType {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// A [`Error::Spec`] error.
    pub fn spec(spec: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Spec {
            spec: spec.into(),
            reason: reason.into(),
        }
    }

    /// A [`Error::Parse`] error.
    pub fn parse(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Parse {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// A [`Error::Refused`] error.
    pub fn refused(reason: impl Into<String>) -> Self {
        Error::Refused {
            reason: reason.into(),
        }
    }

    /// A [`Error::Unsupported`] error.
    pub fn unsupported(
        node: impl Into<String>,
        op: impl Into<String>,
        opset: i64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            node: node.into(),
            op: op.into(),
            opset,
            detail: detail.into(),
        }
    }

    /// A [`Error::Device`] error.
    pub fn device(device: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Device {
            device: device.into(),
            detail: detail.into(),
        }
    }
}
