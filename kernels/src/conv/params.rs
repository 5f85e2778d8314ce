//! Convolution options and the validated geometry derived from them.

use crate::{KernelError, Result};

/// Geometry and options of a 2-D convolution, ONNX Conv semantics (NCHW input, OIHW weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, `[h, w]`.
    pub stride: [usize; 2],
    /// Spacing between kernel taps, `[h, w]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, left, bottom, right]` (ONNX order h_begin, w_begin, h_end, w_end).
    pub pads: [usize; 4],
    /// Number of channel groups; input and output channels are split evenly between them.
    pub groups: usize,
    /// Fused ReLU after the bias.
    pub relu: bool,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            groups: 1,
            relu: false,
        }
    }
}

/// Output dims `[N, O, OH, OW]` for input dims `[N, C, H, W]` and weight dims `[O, C/groups, KH, KW]`.
pub fn conv2d_output_dims(
    input: [usize; 4],
    weight: [usize; 4],
    params: &Conv2dParams,
) -> Result<[usize; 4]> {
    let g = Geometry::new(input, weight, params)?;
    Ok([g.n, g.o, g.oh, g.ow])
}

/// Every size of one convolution, validated: all products below fit in `usize`, and every
/// padded coordinate fits in `isize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub groups: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Output channels per group.
    pub og: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub relu: bool,
}

fn overflow(what: &'static str, detail: String) -> KernelError {
    KernelError::SizeOverflow { what, detail }
}

fn positive(name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(KernelError::InvalidArgument {
            name,
            value: value.to_string(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// Output extent along one axis: `(size + pads - effective_kernel) / stride + 1`.
fn output_extent(
    axis: &'static str,
    size: usize,
    pads: [usize; 2],
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize> {
    let padded = size
        .checked_add(pads[0])
        .and_then(|v| v.checked_add(pads[1]))
        .filter(|&v| v <= isize::MAX as usize)
        .ok_or_else(|| {
            overflow(
                "conv2d padded input",
                format!(
                    "{axis}: {size} + pads {} + {} exceeds isize",
                    pads[0], pads[1]
                ),
            )
        })?;
    let effective = (kernel - 1)
        .checked_mul(dilation)
        .and_then(|v| v.checked_add(1))
        .filter(|&v| v <= isize::MAX as usize)
        .ok_or_else(|| {
            overflow(
                "conv2d kernel",
                format!("{axis}: ({kernel} - 1)·dilation {dilation} + 1 exceeds isize"),
            )
        })?;
    if effective > padded {
        return Err(KernelError::ShapeMismatch {
            op: "conv2d",
            detail: format!(
                "kernel {axis} extent {effective} (size {kernel}, dilation {dilation}) is larger \
                 than the padded input {padded} ({size} + pads {} + {})",
                pads[0], pads[1]
            ),
        });
    }
    Ok((padded - effective) / stride + 1)
}

/// `a·b·c·d` or a typed overflow error naming the dims.
pub(crate) fn product(what: &'static str, dims: [usize; 4]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| overflow(what, format!("dims {dims:?} have more elements than usize")))
}

impl Geometry {
    /// Validates the dims and options of one convolution.
    pub fn new(input: [usize; 4], weight: [usize; 4], p: &Conv2dParams) -> Result<Geometry> {
        let [n, c, h, w] = input;
        let [o, wc, kh, kw] = weight;
        positive("stride[h]", p.stride[0])?;
        positive("stride[w]", p.stride[1])?;
        positive("dilation[h]", p.dilation[0])?;
        positive("dilation[w]", p.dilation[1])?;
        positive("groups", p.groups)?;
        positive("kernel height", kh)?;
        positive("kernel width", kw)?;
        let groups = p.groups;
        if c % groups != 0 {
            return Err(KernelError::ShapeMismatch {
                op: "conv2d",
                detail: format!("input channels {c} are not divisible by groups {groups}"),
            });
        }
        if o % groups != 0 {
            return Err(KernelError::ShapeMismatch {
                op: "conv2d",
                detail: format!("output channels {o} are not divisible by groups {groups}"),
            });
        }
        if wc != c / groups {
            return Err(KernelError::ShapeMismatch {
                op: "conv2d",
                detail: format!(
                    "weight dims {weight:?} have {wc} input channels per group, expected \
                     {} (input channels {c} / groups {groups})",
                    c / groups
                ),
            });
        }
        product("conv2d input", input)?;
        product("conv2d weight", weight)?;
        // With no input channels the weight product is 0 whatever the kernel: bound it alone.
        if kh.checked_mul(kw).is_none() {
            return Err(overflow(
                "conv2d kernel",
                format!("{kh}x{kw} taps exceed usize"),
            ));
        }
        let oh = output_extent(
            "height",
            h,
            [p.pads[0], p.pads[2]],
            kh,
            p.stride[0],
            p.dilation[0],
        )?;
        let ow = output_extent(
            "width",
            w,
            [p.pads[1], p.pads[3]],
            kw,
            p.stride[1],
            p.dilation[1],
        )?;
        product("conv2d output", [n, o, oh, ow])?;
        Ok(Geometry {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            oh,
            ow,
            groups,
            cg: c / groups,
            og: o / groups,
            sh: p.stride[0],
            sw: p.stride[1],
            dh: p.dilation[0],
            dw: p.dilation[1],
            pads: p.pads,
            relu: p.relu,
        })
    }

    /// For kernel column `s`: its offset `s·dw` in padded input columns and the output columns
    /// `lo..hi` whose input column `ow·sw + s·dw - pad_left` lies inside the image.
    pub fn tap_columns(&self, s: usize) -> (usize, usize, usize) {
        let (pad_left, col) = (self.pads[1], s * self.dw);
        let lo = pad_left.saturating_sub(col).div_ceil(self.sw);
        let hi = (pad_left + self.w)
            .saturating_sub(col)
            .div_ceil(self.sw)
            .min(self.ow);
        (col, lo.min(hi), hi)
    }

    /// Values of one input image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Values of one group's channels of one input image (`C/g·H·W`).
    pub fn group_input_len(&self) -> usize {
        self.cg * self.h * self.w
    }

    /// Output positions per channel (`OH·OW`).
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Depth of the implicit gemm (`C/g·KH·KW`).
    pub fn depth(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    /// True for a 1×1 kernel with unit stride and no padding: the image is the gemm's B as is.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pads == [0; 4]
    }

    /// The geometry of `groups` matrices of `rows × depth` "weights" packed as a pointwise
    /// convolution's (one group each): how transformed weights (one matrix per transform
    /// position) pack into the gemm's panels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn matrices(groups: usize, rows: usize, depth: usize) -> Geometry {
        Geometry {
            n: 1,
            c: groups * depth,
            h: 1,
            w: 1,
            o: groups * rows,
            kh: 1,
            kw: 1,
            oh: 1,
            ow: 1,
            groups,
            cg: depth,
            og: rows,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pads: [0; 4],
            relu: false,
        }
    }

    /// Output `(oy, ox)` of channel `o` of image `n` summed directly from its window (no bias;
    /// one group): channel by channel, kernel row by row, in f32. The fallback of the
    /// Winograd paths for outputs whose transform is not finite.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn direct_output(
        &self,
        input: &[f32],
        weight: &[f32],
        n: usize,
        o: usize,
        (oy, ox): (usize, usize),
    ) -> f32 {
        let plane_len = self.h * self.w;
        let taps_len = self.kh * self.kw;
        let mut sum = 0.0f32;
        for c in 0..self.c {
            let plane = &input[(n * self.c + c) * plane_len..][..plane_len];
            let taps = &weight[(o * self.c + c) * taps_len..][..taps_len];
            for (r, row) in taps.chunks_exact(self.kw).enumerate() {
                let y = (self.sh * oy + self.dh * r).checked_sub(self.pads[0]);
                let Some(y) = y.filter(|&y| y < self.h) else {
                    continue;
                };
                for (s, &w) in row.iter().enumerate() {
                    let x = (self.sw * ox + self.dw * s).checked_sub(self.pads[1]);
                    if let Some(x) = x.filter(|&x| x < self.w) {
                        sum += w * plane[y * self.w + x];
                    }
                }
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet_stem_dims() {
        let p = Conv2dParams {
            stride: [2, 2],
            pads: [3, 3, 3, 3],
            ..Conv2dParams::default()
        };
        assert_eq!(
            conv2d_output_dims([1, 3, 224, 224], [64, 3, 7, 7], &p).unwrap(),
            [1, 64, 112, 112]
        );
    }

    #[test]
    fn asymmetric_pads_and_dilation() {
        let p = Conv2dParams {
            dilation: [2, 1],
            pads: [1, 0, 2, 3],
            ..Conv2dParams::default()
        };
        // h: 5 + 3 - 5 + 1 = 4; w: 6 + 3 - 3 + 1 = 7.
        assert_eq!(
            conv2d_output_dims([2, 4, 5, 6], [8, 4, 3, 3], &p).unwrap(),
            [2, 8, 4, 7]
        );
    }

    #[test]
    fn huge_pads_are_refused() {
        let p = Conv2dParams {
            pads: [usize::MAX, 0, 1, 0],
            ..Conv2dParams::default()
        };
        assert!(matches!(
            conv2d_output_dims([1, 1, 4, 4], [1, 1, 1, 1], &p),
            Err(KernelError::SizeOverflow { .. })
        ));
    }
}
