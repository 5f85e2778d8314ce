//! Matrix-multiply benchmark cases: `MxNxK` strings, `t` appended when B is stored transposed.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// One product C[M, N] = A[M, K] · B, with B stored `[K, N]` or (transposed, as a dense
/// layer's weight) `[N, K]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulCase {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    /// B is stored `[N, K]`.
    pub trans_b: bool,
}

impl MatmulCase {
    /// The square case M = N = K = `n`.
    pub fn square(n: usize) -> MatmulCase {
        MatmulCase {
            m: n,
            n,
            k: n,
            trans_b: false,
        }
    }

    /// Parses `MxNxK` or `MxNxKt` (B transposed), e.g. `1x4096x25088t`.
    pub fn parse(text: &str) -> Result<MatmulCase> {
        let text = text.trim();
        let (dims, trans_b) = match text.strip_suffix(['t', 'T']) {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let fields: Vec<&str> = dims.split(['x', 'X']).collect();
        if fields.len() != 3 {
            return Err(Error::parse(
                "matmul shape",
                text,
                format!(
                    "expected MxNxK, with a trailing t for B stored [N, K] (e.g. 1x4096x25088t), \
                     got {} fields",
                    fields.len()
                ),
            ));
        }
        const NAMES: [&str; 3] = ["M", "N", "K"];
        let mut values = [0usize; 3];
        for (i, field) in fields.iter().enumerate() {
            values[i] = match field.trim().parse::<usize>() {
                Ok(0) => {
                    return Err(Error::parse(
                        "matmul shape",
                        text,
                        format!("{} must be at least 1", NAMES[i]),
                    ));
                }
                Ok(v) => v,
                Err(_) => {
                    return Err(Error::parse(
                        "matmul shape",
                        text,
                        format!("{} = `{field}` is not a positive integer", NAMES[i]),
                    ));
                }
            };
        }
        let [m, n, k] = values;
        Ok(MatmulCase { m, n, k, trans_b })
    }

    /// The shape of A, `[M, K]`.
    pub fn a_dims(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    /// The shape B is stored in: `[K, N]`, or `[N, K]` when transposed.
    pub fn b_dims(&self) -> [usize; 2] {
        if self.trans_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }
}

impl fmt::Display for MatmulCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.m, self.n, self.k)?;
        if self.trans_b {
            write!(f, "t")?;
        }
        Ok(())
    }
}

impl FromStr for MatmulCase {
    type Err = Error;

    fn from_str(s: &str) -> Result<MatmulCase> {
        MatmulCase::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_round_trip() {
        for text in ["1x4096x25088t", "8x1000x2048", "7x1x1"] {
            assert_eq!(MatmulCase::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(MatmulCase::square(5).to_string(), "5x5x5");
        assert_eq!(MatmulCase::parse("2x3x4t").unwrap().b_dims(), [3, 4]);
    }

    #[test]
    fn bad_cases_name_the_value() {
        for (bad, named) in [
            ("1x2", "got 2 fields"),
            ("1x0x3", "N must be"),
            ("1xyx3", "N = `y`"),
            ("4x4x4q", "K = `4q`"),
        ] {
            let err = MatmulCase::parse(bad).unwrap_err();
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
    }
}
