//! im2col folded into packing: a [`PackB`] that writes the gemm's B panels straight from the image.
//!
//! B is the `(C/g·KH·KW) × (OH·OW)` matrix whose row `k = (c, r, s)` and column `j = (oh, ow)`
//! hold `x[c, oh·sh - pad_top + r·dh, ow·sw - pad_left + s·dw]` (zero outside the image). It is
//! never materialised: each depth row of a panel is filled from at most a few contiguous (or
//! `sw`-strided) runs of one input row, with only the padding parts zeroed.

use std::cell::Cell;

use super::params::Geometry;
use crate::Isa;
use crate::gemm::PackB;

/// Where each depth index of the implicit gemm reads, precomputed once per convolution so that
/// the packer's inner loops divide nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taps {
    /// Per depth index `k = (c·KH + r)·KW + s`: the channel's plane offset `c·H·W` and the
    /// kernel tap `r·KW + s`. This is the order of a row of OIHW weights.
    depth: Vec<(usize, usize)>,
    /// Per kernel row `r`: its offset `r·dh` in padded input rows.
    rows: Vec<usize>,
    /// Per kernel column `s`: its offset `s·dw` in padded input columns and the output columns
    /// `ow_lo..ow_hi` whose input column lies inside the image.
    cols: Vec<(usize, usize, usize)>,
}

impl Taps {
    /// The taps of a convolution's geometry.
    pub fn new(g: &Geometry) -> Taps {
        let cols = (0..g.kw).map(|s| g.tap_columns(s)).collect();
        let taps = g.kh * g.kw;
        let depth = (0..g.depth())
            .map(|k| (k / taps * g.h * g.w, k % taps))
            .collect();
        Taps {
            depth,
            rows: (0..g.kh).map(|r| r * g.dh).collect(),
            cols,
        }
    }
}

/// A run of a panel's columns that share one output row.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// First column of the run inside the panel.
    at: usize,
    /// Padded input row of the run's output row without the tap offset (`oh·sh`).
    row: usize,
    /// First output column of the run.
    ow: usize,
    /// Columns in the run.
    len: usize,
}

/// Part of a panel row that one kernel tap reads from inside the image: panel columns `a..b`
/// take `x[chan + off + (j - a)·sw]` for the depth index's channel plane offset `chan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub a: usize,
    pub b: usize,
    pub off: usize,
}

/// Scratch space of one `pack_b` call.
#[derive(Default)]
pub(super) struct Scratch {
    segments: Vec<Segment>,
    /// Runs of every kernel tap: those of tap t are `runs[index[t]..index[t + 1]]`.
    pub runs: Vec<Run>,
    pub index: Vec<usize>,
    /// Per-vector loads derived from the runs by the SIMD fillers.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub loads: Vec<(u64, usize)>,
}

thread_local! {
    /// Scratch space of `pack_b`, kept between calls on this thread.
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// The im2col matrix of one image and group, produced panel by panel.
pub(crate) struct Im2col<'a> {
    /// The group's input channels, `C/g·H·W` values.
    pub(super) x: &'a [f32],
    taps: &'a Taps,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
    /// The first im2col column this packer's column 0 stands for.
    col0: usize,
    h: usize,
    w: usize,
    ow: usize,
    sh: usize,
    pub(super) sw: usize,
    pad_top: usize,
    pad_left: usize,
}

impl<'a> Im2col<'a> {
    /// The packer over `x` (one image's channels of one group) with the geometry's taps,
    /// filling panels with instructions of `isa` (which must be available).
    pub fn new(x: &'a [f32], taps: &'a Taps, g: &Geometry, isa: Isa) -> Self {
        debug_assert_eq!(x.len(), g.group_input_len());
        debug_assert_eq!(taps.depth.len(), g.depth());
        Self {
            x,
            taps,
            isa,
            col0: 0,
            h: g.h,
            w: g.w,
            ow: g.ow,
            sh: g.sh,
            sw: g.sw,
            pad_top: g.pads[0],
            pad_left: g.pads[1],
        }
    }

    /// The same packer with its columns shifted: column j is im2col column `col0 + j`.
    pub fn starting_at(self, col0: usize) -> Self {
        Self { col0, ..self }
    }

    /// Splits the panel's columns `j0..j0+live` into runs of one output row each.
    fn segments(&self, j0: usize, live: usize, out: &mut Vec<Segment>) {
        out.clear();
        let (mut oh, mut ow) = (j0 / self.ow, j0 % self.ow);
        let mut at = 0;
        while at < live {
            let len = (self.ow - ow).min(live - at);
            out.push(Segment {
                at,
                row: oh * self.sh,
                ow,
                len,
            });
            at += len;
            oh += 1;
            ow = 0;
        }
    }

    /// The runs of every kernel tap over the panel whose segments are in `scratch`. Every run
    /// reads inside the image: the largest offset it reads is
    /// `chan + off + (b - a - 1)·sw < chan + H·W`.
    fn plan(&self, scratch: &mut Scratch) {
        let Scratch {
            segments,
            runs,
            index,
            ..
        } = scratch;
        runs.clear();
        index.clear();
        index.push(0);
        for &row in &self.taps.rows {
            for &(col, ow_lo, ow_hi) in &self.taps.cols {
                for seg in segments.iter() {
                    let ih = (seg.row + row).wrapping_sub(self.pad_top);
                    if ih >= self.h {
                        continue;
                    }
                    let end = seg.ow + seg.len;
                    let lo = ow_lo.clamp(seg.ow, end);
                    let hi = ow_hi.clamp(lo, end);
                    if lo == hi {
                        continue;
                    }
                    // lo >= ow_lo and hi <= ow_hi: input columns lo·sw + col - pad_left up to
                    // (hi - 1)·sw + col - pad_left are inside the image row ih.
                    runs.push(Run {
                        a: seg.at + lo - seg.ow,
                        b: seg.at + hi - seg.ow,
                        off: ih * self.w + lo * self.sw + col - self.pad_left,
                    });
                }
                index.push(runs.len());
            }
        }
    }

    /// Fills one depth row of a panel (`dst`, `nr` values) portably.
    #[inline(always)]
    fn fill_row(&self, chan: usize, runs: &[Run], dst: &mut [f32]) {
        let mut done = 0;
        for run in runs {
            dst[done..run.a].fill(0.0);
            let copy = &mut dst[run.a..run.b];
            let start = chan + run.off;
            if self.sw == 1 {
                copy.copy_from_slice(&self.x[start..start + copy.len()]);
            } else {
                let src = &self.x[start..start + (copy.len() - 1) * self.sw + 1];
                for (d, s) in copy.iter_mut().zip(src.iter().step_by(self.sw)) {
                    *d = *s;
                }
            }
            done = run.b;
        }
        dst[done..].fill(0.0);
    }

    /// Fills a panel with the SIMD filler of the ISA if there is one for this width; false if not.
    #[inline]
    fn fill_panel_simd(
        &self,
        depth: &[(usize, usize)],
        scratch: &mut Scratch,
        nr: usize,
        panel: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use super::pack_x86::*;
            if self.sw > MAX_GATHER_STRIDE {
                return false;
            }
            // SAFETY (each call): the ISA is available (`conv2d` called `isa.require()`), the
            // panel holds depth.len()·nr floats with nr the filler's width, the runs come
            // from `plan` for at most nr columns, and the stride was bounded just above.
            unsafe {
                match (self.isa, nr) {
                    (Isa::Avx512, 16) => fill_panel_avx512::<1>(self, depth, scratch, panel),
                    (Isa::Avx512, 32) => fill_panel_avx512::<2>(self, depth, scratch, panel),
                    (Isa::Avx512, 64) => fill_panel_avx512::<4>(self, depth, scratch, panel),
                    (Isa::Avx2, 8) => fill_panel_avx2::<1>(self, depth, scratch, panel),
                    (Isa::Avx2, 16) => fill_panel_avx2::<2>(self, depth, scratch, panel),
                    (Isa::Avx2, 32) => fill_panel_avx2::<4>(self, depth, scratch, panel),
                    _ => return false,
                }
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (depth, scratch, nr, panel);
            false
        }
    }
}

impl PackB for Im2col<'_> {
    fn pack_b(&self, k0: usize, kc: usize, n0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
        let depth = &self.taps.depth[k0..k0 + kc];
        let mut scratch = SCRATCH.take();
        for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate() {
            let first = p * nr;
            if first >= nc {
                break;
            }
            self.segments(
                self.col0 + n0 + first,
                nr.min(nc - first),
                &mut scratch.segments,
            );
            self.plan(&mut scratch);
            if !self.fill_panel_simd(depth, &mut scratch, nr, panel) {
                let (runs, index) = (&scratch.runs, &scratch.index);
                for (&(chan, tap), row) in depth.iter().zip(panel.chunks_exact_mut(nr)) {
                    self.fill_row(chan, &runs[index[tap]..index[tap + 1]], row);
                }
            }
        }
        SCRATCH.set(scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::Conv2dParams;
    use super::*;

    /// The explicit im2col matrix, element by element.
    fn explicit(x: &[f32], g: &Geometry) -> Vec<f32> {
        let cols = g.out_plane();
        let mut m = vec![0.0; g.depth() * cols];
        for c in 0..g.cg {
            for r in 0..g.kh {
                for s in 0..g.kw {
                    let k = (c * g.kh + r) * g.kw + s;
                    for oh in 0..g.oh {
                        for ow in 0..g.ow {
                            let ih = (oh * g.sh + r * g.dh) as isize - g.pads[0] as isize;
                            let iw = (ow * g.sw + s * g.dw) as isize - g.pads[1] as isize;
                            if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w {
                                m[k * cols + oh * g.ow + ow] =
                                    x[(c * g.h + ih as usize) * g.w + iw as usize];
                            }
                        }
                    }
                }
            }
        }
        m
    }

    #[test]
    fn panels_match_explicit_im2col() {
        let cases = [
            ([1, 2, 5, 7], [3, 2, 3, 3], [1, 1], [1, 1], [1, 2, 0, 1]),
            ([1, 3, 9, 4], [2, 3, 2, 3], [2, 3], [2, 1], [0, 3, 2, 2]),
            ([1, 1, 1, 1], [1, 1, 3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            // Panels that read padding only.
            ([1, 2, 1, 1], [1, 2, 1, 1], [1, 1], [1, 1], [2, 9, 2, 9]),
        ];
        for (input, weight, stride, dilation, pads) in cases {
            let params = Conv2dParams {
                stride,
                dilation,
                pads,
                ..Conv2dParams::default()
            };
            let g = Geometry::new(input, weight, &params).unwrap();
            let x: Vec<f32> = (0..g.group_input_len()).map(|v| v as f32 + 1.0).collect();
            let t = Taps::new(&g);
            for isa in Isa::available() {
                let packer = Im2col::new(&x, &t, &g, isa);
                let want = explicit(&x, &g);
                let (k, n) = (g.depth(), g.out_plane());
                for nr in [1, 4, 5, 8, 16, 32, 64] {
                    for (k0, kc) in [(0, k), (1, k - 1), (k / 2, k - k / 2)] {
                        for (n0, nc) in [(0, n), (n / 3, n - n / 3)] {
                            let mut dst = vec![f32::NAN; nc.div_ceil(nr) * nr * kc];
                            packer.pack_b(k0, kc, n0, nc, nr, &mut dst);
                            // Shifted to start at column n0, a packer packs the same from 0.
                            let mut shifted = vec![f32::NAN; dst.len()];
                            Im2col::new(&x, &t, &g, isa).starting_at(n0).pack_b(
                                k0,
                                kc,
                                0,
                                nc,
                                nr,
                                &mut shifted,
                            );
                            assert_eq!(dst, shifted);
                            for (i, v) in dst.iter().enumerate() {
                                let (p, kk, j) = (i / (nr * kc), i / nr % kc, i % nr);
                                let col = p * nr + j;
                                let expected = if col < nc {
                                    want[(k0 + kk) * n + n0 + col]
                                } else {
                                    0.0
                                };
                                assert_eq!(
                                    *v,
                                    expected,
                                    "{isa} {input:?} nr={nr} k={} col={col}",
                                    k0 + kk
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
