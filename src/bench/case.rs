//! Convolution benchmark cases: `N-C-H-K-R-stride-pad` strings and the ResNet preset.

use std::fmt;
use std::str::FromStr;

use accelmesh_kernels::conv::{Conv2dParams, conv2d_output_dims};

use crate::{Error, Result};

/// The layers of the `resnet` preset, as `N-C-H-K-R-stride-pad`.
pub const RESNET: [&str; 6] = [
    "1-64-56-64-3-1-1",
    "1-128-28-128-3-1-1",
    "1-256-14-256-3-1-1",
    "8-64-56-64-3-1-1",
    "1-3-224-64-7-2-3",
    "1-256-56-64-1-1-0",
];

/// One square convolution: `n` images of `c`×`h`×`h`, `k` filters of `r`×`r`, stride, padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvCase {
    /// Batch size N.
    pub n: usize,
    /// Input channels C.
    pub c: usize,
    /// Input height and width H = W.
    pub h: usize,
    /// Output channels (filters) K.
    pub k: usize,
    /// Kernel height and width R.
    pub r: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvCase {
    /// Parses `N-C-H-K-R-stride-pad`, e.g. `1-64-56-64-3-1-1`, checking that it convolves.
    pub fn parse(text: &str) -> Result<ConvCase> {
        let text = text.trim();
        let fields: Vec<&str> = text.split('-').collect();
        if fields.len() != 7 {
            return Err(Error::parse(
                "conv shape",
                text,
                format!(
                    "expected 7 fields N-C-H-K-R-stride-pad (e.g. 1-64-56-64-3-1-1), got {}",
                    fields.len()
                ),
            ));
        }
        const NAMES: [&str; 7] = ["N", "C", "H", "K", "R", "stride", "pad"];
        let mut values = [0usize; 7];
        for (i, field) in fields.iter().enumerate() {
            values[i] = field.trim().parse().map_err(|_| {
                Error::parse(
                    "conv shape",
                    text,
                    format!("{} = `{field}` is not a non-negative integer", NAMES[i]),
                )
            })?;
            if i < 6 && values[i] == 0 {
                return Err(Error::parse(
                    "conv shape",
                    text,
                    format!("{} must be at least 1", NAMES[i]),
                ));
            }
        }
        let [n, c, h, k, r, stride, pad] = values;
        let case = ConvCase {
            n,
            c,
            h,
            k,
            r,
            stride,
            pad,
        };
        conv2d_output_dims(case.input_dims(), case.weight_dims(), &case.params()).map_err(|e| {
            Error::parse("conv shape", text, format!("not a valid convolution: {e}"))
        })?;
        Ok(case)
    }

    /// Parses a comma-separated list of cases.
    pub fn parse_list(text: &str) -> Result<Vec<ConvCase>> {
        text.split(',').map(ConvCase::parse).collect()
    }

    /// The cases of a named preset (only `resnet` so far).
    pub fn preset(name: &str) -> Result<Vec<ConvCase>> {
        match name.trim().to_ascii_lowercase().as_str() {
            "resnet" => Ok(ConvCase::resnet()),
            _ => Err(Error::parse("preset", name, "expected resnet")),
        }
    }

    /// The ResNet layers of [`RESNET`].
    pub fn resnet() -> Vec<ConvCase> {
        RESNET
            .iter()
            .filter_map(|s| ConvCase::parse(s).ok())
            .collect()
    }

    /// The input dimensions `[N, C, H, H]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.h]
    }

    /// The weight dimensions `[K, C, R, R]`.
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.k, self.c, self.r, self.r]
    }

    /// The kernel parameters: square stride, equal padding, one group, no activation.
    pub fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: [self.stride; 2],
            pads: [self.pad; 4],
            ..Conv2dParams::default()
        }
    }
}

impl fmt::Display for ConvCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}-{}-{}-{}",
            self.n, self.c, self.h, self.k, self.r, self.stride, self.pad
        )
    }
}

impl FromStr for ConvCase {
    type Err = Error;

    fn from_str(s: &str) -> Result<ConvCase> {
        ConvCase::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet_cases_round_trip() {
        let cases = ConvCase::resnet();
        assert_eq!(cases.len(), RESNET.len());
        for (case, text) in cases.iter().zip(RESNET) {
            assert_eq!(case.to_string(), text);
        }
    }

    #[test]
    fn bad_cases_name_the_value() {
        for (bad, named) in [
            ("1-64-56-64-3-1", "7 fields"),
            ("1-64-x-64-3-1-1", "H = `x`"),
            ("1-0-56-64-3-1-1", "C must be"),
            ("1-8-2-8-5-1-0", "1-8-2-8-5-1-0"),
        ] {
            let err = ConvCase::parse(bad).unwrap_err();
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
    }
}
