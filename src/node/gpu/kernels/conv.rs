//! conv2d on the GPU: implicit GEMM on the matmul tiling (the input gathered into the B tile
//! on the fly), a direct kernel for depthwise, batches split where a binding would overflow.

use accelmesh_kernels::conv::Conv2dParams;

use super::matmul::{
    SumPartials, TileConfig, encode_sum_partials, gemm_source, partial_buffer, split_depth, vec4_ok,
};
use super::{Recorder, Storage, dim_u32, dummy_f32, f32_bits, window};
use crate::node::gpu::GpuShared;
use crate::node::gpu::tensor::GpuTensor;
use crate::op::Conv2dDims;
use crate::{Error, Result};

/// Device-resident operands of one convolution.
pub struct ConvArgs<'a> {
    /// Input, NCHW.
    pub x: &'a GpuTensor,
    /// Weights, OIHW.
    pub w: &'a GpuTensor,
    /// Optional f32 bias `[O]`.
    pub bias: Option<&'a GpuTensor>,
    /// Output, f32 NCHW.
    pub y: &'a GpuTensor,
    /// Validated dimensions.
    pub dims: Conv2dDims,
    /// Stride, padding, dilation, groups, ReLU.
    pub params: Conv2dParams,
}

/// Batches per sub-dispatch so that input and output windows fit one binding.
fn batch_piece(shared: &GpuShared, args: &ConvArgs<'_>, sx: Storage) -> Result<usize> {
    let [n, c, h, w] = args.dims.input;
    let [_, o, oh, ow] = args.dims.output;
    let per_in = (c * h * w) as u64 * sx.elem_bytes();
    let per_out = (o * oh * ow) as u64 * 4;
    let room = shared
        .ctx
        .limits
        .max_storage_binding
        .saturating_sub(shared.ctx.limits.storage_offset_alignment + 16);
    let per = per_in.max(per_out).max(1);
    let batches = (room / per) as usize;
    if batches == 0 {
        return Err(Error::device(
            &shared.ctx.id,
            format!(
                "one image of conv2d input {:?} / output {:?} needs {per} bytes, more than the \
                 storage binding limit of {} bytes",
                args.dims.input, args.dims.output, shared.ctx.limits.max_storage_binding
            ),
        ));
    }
    Ok(batches.min(n.max(1)))
}

/// Encodes the convolution: depthwise kernel when every group has one input channel,
/// implicit GEMM otherwise.
pub fn encode_conv2d(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &ConvArgs<'_>,
    tile: TileConfig,
) -> Result<()> {
    let [n, _, _, _] = args.dims.input;
    let [_, o, oh, ow] = args.dims.output;
    if n == 0 || o == 0 || oh == 0 || ow == 0 {
        return Ok(());
    }
    let native = shared.ctx.has_f16();
    let sx = Storage::of(args.x.dtype(), native);
    let sw = Storage::of(args.w.dtype(), native);
    let per = batch_piece(shared, args, sx)?;
    let dummy = dummy_f32(shared);
    let depthwise = args.params.groups > 1 && args.dims.weight[1] == 1;
    let mut b0 = 0;
    while b0 < n {
        let b1 = (b0 + per).min(n);
        if depthwise {
            encode_depthwise(shared, rec, args, b0, b1, sx, sw, &dummy)?;
        } else {
            encode_gemm(shared, rec, args, tile, b0, b1, sx, sw, &dummy)?;
        }
        b0 = b1;
    }
    Ok(())
}

/// Windows over the batch range `b0..b1` of the input and output, and the whole weights
/// and bias; returns their bindings' element offsets too.
#[allow(clippy::type_complexity)]
fn windows<'a>(
    shared: &GpuShared,
    args: &ConvArgs<'a>,
    b0: usize,
    b1: usize,
    sx: Storage,
    sw: Storage,
    dummy: &'a wgpu::Buffer,
) -> Result<([wgpu::BindingResource<'a>; 4], [u32; 4])> {
    let [_, c, h, w] = args.dims.input;
    let [_, o, oh, ow] = args.dims.output;
    let per_in = (c * h * w) as u64;
    let per_out = (o * oh * ow) as u64;
    let nb = (b1 - b0) as u64;
    let xw = window(shared, args.x, sx, b0 as u64 * per_in, nb * per_in)?;
    let wcount = args.w.numel() as u64;
    let ww = window(shared, args.w, sw, 0, wcount)?;
    let yw = window(
        shared,
        args.y,
        Storage::F32,
        b0 as u64 * per_out,
        nb * per_out,
    )?;
    let (bias_res, bias_off) = match args.bias {
        Some(b) => {
            let bw = window(shared, b, Storage::F32, 0, o as u64)?;
            (bw.resource(), bw.elem_offset)
        }
        None => (dummy.as_entire_binding(), 0),
    };
    Ok((
        [xw.resource(), ww.resource(), bias_res, yw.resource()],
        [xw.elem_offset, ww.elem_offset, bias_off, yw.elem_offset],
    ))
}

#[allow(clippy::too_many_arguments)]
fn encode_gemm(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &ConvArgs<'_>,
    tile: TileConfig,
    b0: usize,
    b1: usize,
    sx: Storage,
    sw: Storage,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let [_, c, h, w] = args.dims.input;
    let [o, cg, kh, kw] = args.dims.weight;
    let [_, _, oh, ow] = args.dims.output;
    let prm = &args.params;
    let groups = prm.groups;
    let og = o / groups;
    let (res, offs) = windows(shared, args, b0, b1, sx, sw, dummy)?;
    let [x_res, w_res, bias_res, y_res] = res;
    let [x_off, w_off, bias_off, y_off] = offs;
    // A = weights (operand `a`, rows of K contiguous), B = gathered input (operand `b`).
    let depth_all = (cg * kh * kw) as u32;
    let vec_a = vec4_ok(sw, w_off, depth_all, 1);
    let la = if vec_a { Storage::F32Vec4 } else { sw };
    let key = format!("gemm_conv|{}|{}", la.key(), sx.key());
    let mut constants = tile.constants();
    constants.push(("VEC_A", f64::from(u8::from(vec_a))));
    let pipeline = shared.kernels.get(
        shared,
        &key,
        || {
            gemm_source(
                la,
                sx,
                include_str!("../../../../shaders/gemm_conv.wgsl"),
                tile,
            )
        },
        &constants,
    )?;
    let rows = dim_u32("output channels per group", og as u64)?;
    let cols = dim_u32("batch × output pixels", ((b1 - b0) * oh * ow) as u64)?;
    let depth = dim_u32("channels × taps", (cg * kh * kw) as u64)?;
    let tiles_n = cols.div_ceil(tile.bn);
    let tiles_m = rows.div_ceil(tile.bm);
    let tiles = u64::from(tiles_n) * u64::from(tiles_m) * groups as u64;
    // One image whose output gives few tiles (a deep layer at batch 1): split the depth, each
    // split writing a partial output, summed after with the bias and ReLU.
    let splits = if b1 - b0 == 1 {
        conv_split_count(tiles, depth as usize, tile)
    } else {
        1
    };
    let (chunk, splits) = split_depth(depth as usize, splits, tile.bk as usize);
    let total = tiles * splits as u64;
    let mut epilogue = 0;
    if prm.relu {
        epilogue |= 1;
    }
    if args.bias.is_some() {
        epilogue |= 2;
    }
    let flags = if splits > 1 {
        16 | 32
    } else {
        16 | 32 | epilogue
    };
    let partial = if splits > 1 {
        Some(partial_buffer(args.y, splits, o, oh * ow)?)
    } else {
        None
    };
    let partial_window = match &partial {
        Some(t) => Some(window(shared, t, Storage::F32, 0, t.numel() as u64)?),
        None => None,
    };
    let (c_res, c_off) = match &partial_window {
        Some(w) => (w.resource(), w.elem_offset),
        None => (y_res.clone(), y_off),
    };
    let mut p = vec![0u32; 36];
    p[0] = rows;
    p[1] = cols;
    p[2] = depth;
    p[3] = w_off;
    p[6] = x_off;
    p[9] = c_off;
    p[11] = tiles_n;
    p[12] = tiles_m;
    p[13] = dim_u32("workgroups", total)?;
    p[14] = f32_bits(1.0);
    p[15] = f32_bits(0.0);
    p[16] = flags;
    p[17] = bias_off;
    p[18] = dim_u32("K chunk", chunk as u64)?;
    p[19] = dim_u32("output size", (o * oh * ow) as u64)?;
    p[20] = dim_u32("C", c as u64)?;
    p[21] = dim_u32("H", h as u64)?;
    p[22] = dim_u32("W", w as u64)?;
    p[23] = dim_u32("OH", oh as u64)?;
    p[24] = dim_u32("OW", ow as u64)?;
    p[25] = kh as u32;
    p[26] = kw as u32;
    p[27] = dim_u32("stride", prm.stride[0] as u64)?;
    p[28] = dim_u32("stride", prm.stride[1] as u64)?;
    p[29] = dim_u32("dilation", prm.dilation[0] as u64)?;
    p[30] = dim_u32("dilation", prm.dilation[1] as u64)?;
    p[31] = dim_u32("padding", prm.pads[0] as u64)?;
    p[32] = dim_u32("padding", prm.pads[1] as u64)?;
    p[33] = cg as u32;
    p[34] = dim_u32("O", o as u64)?;
    p[35] = dim_u32("groups", groups as u64)?;
    rec.dispatch(
        &pipeline,
        &p,
        &[(1, w_res), (2, x_res), (3, c_res), (4, bias_res.clone())],
        total,
    )?;
    if let (Some(pw), Some(_)) = (&partial_window, &partial) {
        let y = window(
            shared,
            args.y,
            Storage::F32,
            (b0 * o * oh * ow) as u64,
            (o * oh * ow) as u64,
        )?;
        encode_sum_partials(
            shared,
            rec,
            &SumPartials {
                partial: pw,
                splits,
                m: o,
                n: oh * ow,
                c: &y,
                c_rs: oh * ow,
                alpha: 1.0,
                beta: 0.0,
                flags: epilogue,
                bias: (bias_res, bias_off),
            },
        )?;
    }
    if let Some(t) = partial {
        // Back to the pool only after the submission is recorded (the queue orders reuse).
        rec.keep_alive(t);
    }
    Ok(())
}

/// K splits for a convolution of one image whose output gives `tiles` workgroups: enough for
/// about 256 workgroups (a large GPU has over a hundred compute units, and a deep layer at
/// batch 1 gives a handful of tiles), each split at least 128 deep; 1 means no split.
pub fn conv_split_count(tiles: u64, depth: usize, tile: TileConfig) -> usize {
    if tiles >= 128 || depth < 512 {
        return 1;
    }
    let by_occupancy = 256usize.div_ceil(tiles.max(1) as usize);
    let by_depth = depth / 128.max(tile.bk as usize);
    by_occupancy.min(by_depth).clamp(1, 16)
}

#[allow(clippy::too_many_arguments)]
fn encode_depthwise(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &ConvArgs<'_>,
    b0: usize,
    b1: usize,
    sx: Storage,
    sw: Storage,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let [_, c, h, w] = args.dims.input;
    let [o, _, kh, kw] = args.dims.weight;
    let [_, _, oh, ow] = args.dims.output;
    let prm = &args.params;
    let key = format!("depthwise|{}|{}", sx.key(), sw.key());
    let pipeline = shared.kernels.get(
        shared,
        &key,
        || {
            let mut s = String::new();
            if sx == Storage::F16Native || sw == Storage::F16Native {
                s.push_str("enable f16;\n");
            }
            s.push_str(&sx.loader("x", 1));
            s.push_str(&sw.loader("w", 2));
            s.push_str(include_str!("../../../../shaders/depthwise.wgsl"));
            s
        },
        &[("WG", 256.0)],
    )?;
    let (res, offs) = windows(shared, args, b0, b1, sx, sw, dummy)?;
    let [x_res, w_res, bias_res, y_res] = res;
    let [x_off, w_off, bias_off, y_off] = offs;
    let total = ((b1 - b0) * o * oh * ow) as u64;
    let mut flags = 0;
    if prm.relu {
        flags |= 1;
    }
    if args.bias.is_some() {
        flags |= 2;
    }
    let p = vec![
        dim_u32("outputs", total)?,
        x_off,
        w_off,
        y_off,
        bias_off,
        flags,
        dim_u32("C", c as u64)?,
        dim_u32("H", h as u64)?,
        dim_u32("W", w as u64)?,
        dim_u32("O", o as u64)?,
        dim_u32("OH", oh as u64)?,
        dim_u32("OW", ow as u64)?,
        kh as u32,
        kw as u32,
        prm.stride[0] as u32,
        prm.stride[1] as u32,
        prm.dilation[0] as u32,
        prm.dilation[1] as u32,
        prm.pads[0] as u32,
        prm.pads[1] as u32,
        dim_u32("channels per group", (o / prm.groups) as u64)?,
    ];
    rec.dispatch(
        &pipeline,
        &p,
        &[(1, x_res), (2, w_res), (3, bias_res), (4, y_res)],
        total.div_ceil(256),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deep_layers_with_few_tiles_split() {
        let t = TileConfig::DEFAULT;
        assert_eq!(conv_split_count(128, 4608, t), 1);
        assert_eq!(conv_split_count(8, 511, t), 1);
        assert_eq!(conv_split_count(8, 4608, t), 16);
        assert_eq!(conv_split_count(64, 4608, t), 4);
        assert_eq!(conv_split_count(4, 640, t), 5);
    }
}
