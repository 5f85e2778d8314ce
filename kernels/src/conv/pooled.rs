//! A convolution followed by a max pooling, computed band by band so that the convolution's
//! output never goes through memory: each task convolves the rows one band of pooled rows
//! needs into a buffer that stays in L2, pools them into place and moves on.
//!
//! An image network's first layer writes its largest activation (ResNet-50's 7×7 stem: 64 ×
//! 112 × 112 per image, 25.7 MB at batch 8) only for the max pooling after it to read it back
//! and keep a quarter. Banded, a task copies the input rows its band reads (with the padding
//! the band needs, as the convolution's own), convolves them with the layer's weights —
//! pinned weights are packed once, whatever the band's height — and pools the band's rows
//! into the output planes. Neighbouring bands share the conv row between them (a 3×3 pool at
//! stride 2 reads one row of its window from the band above), which is computed twice.

use rayon::prelude::*;

use super::params::product;
use super::{Conv2dParams, band_row_alignment, check_len, conv2d, conv2d_output_dims};
use crate::pool::{Pool2dParams, max_pool2d_with_isa, pool2d_output_dims};
use crate::{Element, Isa, Result};

/// Bytes of convolution output a band aims at: with its input rows and pooled rows it stays
/// within a 2 MiB L2. Measured on ResNet-50's stem at batch 8 (fused / apart): bands of 128 KiB
/// 1.07, 256 KiB 0.91, 512 KiB 0.86–0.95, 1 MiB 0.83–0.99, 2 MiB 0.98–0.99.
const BAND_BYTES: usize = 512 << 10;

/// Least convolution output (bytes, all images) from which banding pays: below it the output
/// stays in the caches between the two ops anyway, and the bands' shared rows (computed twice)
/// and per-band calls cost more than they save. Measured inside ResNet-50 (stem and pool,
/// fused / apart): batch 8, 25.7 MB, 0.86–0.90; batch 1, 3.2 MB, 1.00–1.24.
const BANDED_MIN_BYTES: usize = 8 << 20;

/// Whether [`conv2d_max_pool`] pays over the two ops apart for a convolution output of
/// `conv_dims` (NCHW): only where that output would not stay in the caches.
pub fn banding_pays(conv_dims: [usize; 4]) -> bool {
    conv_dims
        .iter()
        .try_fold(4usize, |bytes, &d| bytes.checked_mul(d))
        .is_none_or(|bytes| bytes >= BANDED_MIN_BYTES)
}

/// `output = max_pool(relu?(conv(input, weight) + bias))` (NCHW, f32 output of the pooled
/// dims), without storing the convolution's whole output. Any convolution and max pooling
/// [`conv2d`] and [`max_pool2d_with_isa`] take; a pooling with dilation or ceil mode (or an
/// input of empty planes, all padding) runs the two apart.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_max_pool<T: Element>(
    isa: Isa,
    input: &[T],
    input_dims: [usize; 4],
    weight: &[T],
    weight_dims: [usize; 4],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    pool: &Pool2dParams,
    output: &mut [f32],
) -> Result<()> {
    let isa = isa.require()?;
    let conv_dims = conv2d_output_dims(input_dims, weight_dims, params)?;
    let out_dims = pool2d_output_dims(conv_dims, pool)?;
    check_len(
        "conv2d input",
        input.len(),
        product("conv2d input", input_dims)?,
    )?;
    check_len(
        "pooled output",
        output.len(),
        product("pooled output", out_dims)?,
    )?;
    if output.is_empty() {
        return Ok(());
    }
    if pool.dilation != [1, 1] || pool.ceil_mode || input_dims[2] * input_dims[3] == 0 {
        let mut conv = vec![0.0f32; product("conv2d output", conv_dims)?];
        conv2d(
            isa,
            input,
            input_dims,
            weight,
            weight_dims,
            bias,
            params,
            &mut conv,
        )?;
        return max_pool2d_with_isa(&conv, conv_dims, pool, output, isa);
    }
    let bands = Bands::new(input_dims, conv_dims, out_dims, pool);
    let [_, channels, ph, pw] = out_dims;
    // Every (image, band) task with the rows of the output planes it writes (disjoint).
    let mut tasks = Vec::new();
    for (image, out) in output.chunks_mut(channels * ph * pw).enumerate() {
        for (band, rows) in bands.split_rows(out, ph * pw, pw).into_iter().enumerate() {
            tasks.push((image, band, rows));
        }
    }
    let work = |buffers: &mut Buffers<T>, (image, band, mut rows): (usize, usize, BandRows<'_>)| {
        bands.run(
            isa,
            buffers,
            &input[image * bands.image_len..][..bands.image_len],
            weight,
            weight_dims,
            bias,
            params,
            pool,
            band,
        )?;
        rows.fill_from(&buffers.pooled);
        Ok(())
    };
    if rayon::current_num_threads() > 1 && tasks.len() > 1 {
        tasks
            .into_par_iter()
            .map_init(Buffers::default, work)
            .collect::<Result<()>>()
    } else {
        let mut buffers = Buffers::default();
        tasks
            .into_iter()
            .try_for_each(|task| work(&mut buffers, task))
    }
}

/// A task's buffers, kept from band to band: the band's input rows, its convolution
/// output and its pooled rows.
struct Buffers<T> {
    input: Vec<T>,
    conv: Vec<f32>,
    pooled: Vec<f32>,
}

impl<T> Default for Buffers<T> {
    fn default() -> Self {
        Buffers {
            input: Vec::new(),
            conv: Vec::new(),
            pooled: Vec::new(),
        }
    }
}

/// The rows of one band in every output plane of an image: `planes` runs of `len` floats.
struct BandRows<'a> {
    runs: Vec<&'a mut [f32]>,
}

impl BandRows<'_> {
    /// Copies the band's pooled planes (one run per plane, one after the other) into place.
    fn fill_from(&mut self, pooled: &[f32]) {
        let len = self.runs.first().map_or(0, |r| r.len());
        for (run, src) in self.runs.iter_mut().zip(pooled.chunks_exact(len.max(1))) {
            run.copy_from_slice(src);
        }
    }
}

/// How an image's pooled rows are cut into bands, and the sizes every band shares.
struct Bands {
    /// Bands per image.
    count: usize,
    /// Pooled rows per band (the last may have fewer).
    rows: usize,
    /// Values of one input image.
    image_len: usize,
    input_dims: [usize; 4],
    conv_dims: [usize; 4],
    out_dims: [usize; 4],
}

impl Bands {
    /// Bands of about [`BAND_BYTES`] of convolution output, at least one pooled row each;
    /// on images of few bands, enough bands for every thread to have one per image.
    fn new(
        input_dims: [usize; 4],
        conv_dims: [usize; 4],
        out_dims: [usize; 4],
        pool: &Pool2dParams,
    ) -> Bands {
        let [n, o, _, ow] = conv_dims;
        let ph = out_dims[2];
        // Convolution rows per pooled row (a band of r pooled rows computes about r·stride).
        let conv_row_bytes = o * ow * 4 * pool.stride[0].max(1);
        let mut count = (ph * conv_row_bytes).div_ceil(BAND_BYTES).clamp(1, ph);
        let threads = rayon::current_num_threads();
        while count < ph && !(n * count).is_multiple_of(threads) && n * count < 4 * threads {
            count += 1;
        }
        let rows = ph.div_ceil(count);
        Bands {
            count: ph.div_ceil(rows),
            rows,
            image_len: input_dims[1] * input_dims[2] * input_dims[3],
            input_dims,
            conv_dims,
            out_dims,
        }
    }

    /// Pooled rows of band `band`.
    fn pooled_rows(&self, band: usize) -> std::ops::Range<usize> {
        let first = band * self.rows;
        first..(first + self.rows).min(self.out_dims[2])
    }

    /// An image's output cut into its bands' rows, plane by plane.
    fn split_rows<'a>(
        &self,
        image_out: &'a mut [f32],
        plane: usize,
        pw: usize,
    ) -> Vec<BandRows<'a>> {
        let mut bands: Vec<BandRows<'a>> = (0..self.count)
            .map(|_| BandRows {
                runs: Vec::with_capacity(self.out_dims[1]),
            })
            .collect();
        for plane in image_out.chunks_mut(plane) {
            let mut rest = plane;
            for (band, rows) in bands.iter_mut().enumerate() {
                let len = self.pooled_rows(band).len() * pw;
                let (run, tail) = rest.split_at_mut(len);
                rows.runs.push(run);
                rest = tail;
            }
        }
        bands
    }

    /// Convolves the rows band `band` of one image (`image`, its input) needs and pools them
    /// into `buffers.pooled` (the band's rows of each plane, plane after plane).
    #[allow(clippy::too_many_arguments)]
    fn run<T: Element>(
        &self,
        isa: Isa,
        buffers: &mut Buffers<T>,
        image: &[T],
        weight: &[T],
        weight_dims: [usize; 4],
        bias: Option<&[f32]>,
        params: &Conv2dParams,
        pool: &Pool2dParams,
        band: usize,
    ) -> Result<()> {
        let [_, c, h, w] = self.input_dims;
        let [_, o, oh, ow] = self.conv_dims;
        let pw = self.out_dims[3];
        let prows = self.pooled_rows(band);
        // The pooling windows' rows, in convolution rows (may reach into the pool's padding).
        let (ps, pk, pt) = (pool.stride[0], pool.kernel[0], pool.pads[0] as isize);
        let window_start = |p: usize| (p * ps) as isize - pt;
        let first = window_start(prows.start);
        let end = window_start(prows.end - 1) + pk as isize;
        let (c0, c1) = (first.max(0) as usize, (end.min(oh as isize)) as usize);
        // Convolved from and to rows the whole image's convolution could start a tile on, so
        // that the band's values are the whole image's bit for bit.
        let align = band_row_alignment(isa, self.input_dims, weight_dims, params);
        let (c0, skip) = (c0 / align * align, c0 % align);
        let aligned_end = (c1.div_ceil(align) * align).min(oh);
        let (c1, spare) = (aligned_end, aligned_end - c1);
        // The input rows those convolution rows read (may reach into the conv's padding).
        let (sh, dh, ct) = (
            params.stride[0],
            params.dilation[0],
            params.pads[0] as isize,
        );
        let extent = ((weight_dims[2] - 1) * dh + 1) as isize;
        let in_first = (c0 * sh) as isize - ct;
        let in_end = ((c1 - 1) * sh) as isize - ct + extent;
        let (r0, r1) = (in_first.max(0) as usize, (in_end.min(h as isize)) as usize);
        let rows_in = r1 - r0;
        buffers.input.clear();
        for channel in image.chunks_exact(h * w).take(c) {
            buffers.input.extend_from_slice(&channel[r0 * w..r1 * w]);
        }
        let band_params = Conv2dParams {
            pads: [
                (-in_first).max(0) as usize,
                params.pads[1],
                (in_end - h as isize).max(0) as usize,
                params.pads[3],
            ],
            ..params.clone()
        };
        let conv_rows = c1 - c0;
        buffers.conv.resize(o * conv_rows * ow, 0.0);
        conv2d(
            isa,
            &buffers.input,
            [1, c, rows_in, w],
            weight,
            weight_dims,
            bias,
            &band_params,
            &mut buffers.conv,
        )?;
        let band_pool = Pool2dParams {
            pads: [
                (-first).max(0) as usize,
                pool.pads[1],
                (end - oh as isize).max(0) as usize,
                pool.pads[3],
            ],
            ..*pool
        };
        buffers.pooled.resize(o * prows.len() * pw, 0.0);
        if skip == 0 && spare == 0 {
            return max_pool2d_with_isa(
                &buffers.conv,
                [1, o, conv_rows, ow],
                &band_pool,
                &mut buffers.pooled,
                isa,
            );
        }
        // Pool each plane's rows between the alignment's extra ones.
        let pooled_rows = conv_rows - skip - spare;
        for (plane, pooled) in buffers
            .conv
            .chunks_exact(conv_rows * ow)
            .zip(buffers.pooled.chunks_exact_mut(prows.len() * pw))
        {
            max_pool2d_with_isa(
                &plane[skip * ow..][..pooled_rows * ow],
                [1, 1, pooled_rows, ow],
                &band_pool,
                pooled,
                isa,
            )?;
        }
        Ok(())
    }
}
