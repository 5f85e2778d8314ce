//! The elementwise, pooling, normalisation and softmax kernels inference needs between the
//! matmuls and convolutions, so that a chain of layers stays on the GPU.
//!
//! Every input is read through a dtype loader (f32, f16 or bf16, widened to f32); outputs are
//! f32. Tensors larger than one storage binding are processed in pieces of whole independent
//! blocks (elements, rows, channel planes); an error names the binding limit where one block
//! (or an operand broadcast across blocks) does not fit one binding.

use accelmesh_kernels::elementwise::{BinaryOp, Unary};
use accelmesh_kernels::pool::Pool2dParams;

use super::{Recorder, Storage, dim_u32, f32_bits, window};
use crate::node::gpu::GpuShared;
use crate::node::gpu::tensor::GpuTensor;
use crate::op::{
    Op, batch_norm_dims, binary_shape, check_unary, global_pool_dims, pool2d_dims, softmax_dims,
};
use crate::tensor::Shape;
use crate::{Error, Result};

/// Invocations per workgroup of the one-element-per-invocation kernels.
const WG: u32 = 256;
/// Most dimensions a merged broadcast may keep on the GPU.
pub const MAX_BROADCAST_RANK: usize = 6;

/// Encodes `op` (one of the elementwise, pooling or normalisation ops) on `inputs` into the
/// f32 output `y`, whose shape the caller has taken from `op.output_shape`.
pub fn encode_op(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    op: &Op,
    inputs: &[&GpuTensor],
    y: &GpuTensor,
) -> Result<()> {
    let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
    match op {
        Op::Unary(u) => encode_unary(shared, rec, *u, inputs[0], y),
        Op::Binary(b) => encode_binary(shared, rec, *b, inputs[0], inputs[1], y),
        Op::Softmax { axis, log } => {
            let (outer, n, inner) = softmax_dims(op.name(), *axis, &shapes)?;
            encode_softmax(shared, rec, inputs[0], y, [outer, n, inner], *log)
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let (dims, out) = pool2d_dims(op.name(), p, &shapes)?;
            let max = matches!(op, Op::MaxPool(_));
            encode_pool2d(shared, rec, inputs[0], y, dims, out, p, max)
        }
        Op::GlobalAvgPool => {
            let dims = global_pool_dims(&shapes)?;
            encode_global_avg_pool(shared, rec, inputs[0], y, dims)
        }
        Op::BatchNorm { epsilon, relu } => {
            let dims = batch_norm_dims(*epsilon, &shapes)?;
            let params = [inputs[1], inputs[2], inputs[3], inputs[4]];
            let settings = BatchNormSettings {
                epsilon: *epsilon,
                relu: *relu,
            };
            encode_batch_norm(shared, rec, inputs[0], params, y, dims, settings)
        }
        Op::MatMul { .. } | Op::Conv2d(_) => Err(Error::shape(
            op.name(),
            "not an elementwise, pooling or normalisation op",
        )),
    }
}

/// The storage `t` is read with on this device.
fn storage(shared: &GpuShared, t: &GpuTensor) -> Storage {
    Storage::of(t.dtype(), shared.ctx.has_f16())
}

/// WGSL source: `enable f16` where a loader needs it, the loaders, then `parts`.
fn source(loaders: &[(Storage, &str, u32)], parts: &[&str]) -> String {
    let mut s = String::new();
    if loaders.iter().any(|(st, _, _)| *st == Storage::F16Native) {
        s.push_str("enable f16;\n");
    }
    for (st, name, binding) in loaders {
        s.push_str(&st.loader(name, *binding));
    }
    for part in parts {
        s.push_str(part);
    }
    s
}

/// The size of one independent block of work: bytes of each operand it binds, and the
/// invocations it needs (`items` spread over workgroups of `per_group`).
struct Block<'a> {
    /// What a block is, for errors.
    what: &'a str,
    /// Bytes of each bound operand per block.
    bytes: &'a [u64],
    /// Work items per block (0: the caller splits its dispatches itself).
    items: u64,
    /// Work items per workgroup.
    per_group: u64,
}

/// How many blocks fit one dispatch (each operand within one binding, the workgroups within
/// the folded grid), at most `blocks`; an error naming the limit when not even one does.
fn blocks_per_piece(shared: &GpuShared, block: &Block<'_>, blocks: usize) -> Result<usize> {
    let limits = &shared.ctx.limits;
    let room = limits
        .max_storage_binding
        .saturating_sub(limits.storage_offset_alignment + 16);
    let per = block.bytes.iter().copied().max().unwrap_or(1).max(1);
    let by_binding = room / per;
    if by_binding == 0 {
        return Err(Error::device(
            &shared.ctx.id,
            format!(
                "one {} needs {per} bytes, more than the storage binding limit of {} bytes",
                block.what, limits.max_storage_binding
            ),
        ));
    }
    let dim = u64::from(limits.max_workgroups_per_dim.max(1));
    let max_groups = dim.saturating_mul(dim).saturating_mul(dim);
    let by_grid = max_groups
        .saturating_mul(block.per_group.max(1))
        .checked_div(block.items)
        .unwrap_or(u64::MAX);
    if by_grid == 0 {
        return Err(Error::device(
            &shared.ctx.id,
            format!(
                "one {} needs {} workgroups, more than the {max_groups} one dispatch may have",
                block.what,
                block.items.div_ceil(block.per_group.max(1))
            ),
        ));
    }
    let fit = by_binding.min(by_grid);
    Ok(usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .min(blocks.max(1)))
}

/// The shader numbering of a unary op and its two parameters.
fn unary_code(u: Unary) -> (u32, f32, f32) {
    match u {
        Unary::Relu => (0, 0.0, 0.0),
        Unary::Clip { min, max } => (1, min, max),
        Unary::LeakyRelu { alpha } => (2, alpha, 0.0),
        Unary::Elu { alpha } => (3, alpha, 0.0),
        Unary::Sigmoid => (4, 0.0, 0.0),
        Unary::Tanh => (5, 0.0, 0.0),
        Unary::Gelu => (6, 0.0, 0.0),
        Unary::GeluTanh => (7, 0.0, 0.0),
        Unary::Silu => (8, 0.0, 0.0),
        Unary::HardSigmoid { alpha, beta } => (9, alpha, beta),
        Unary::HardSwish => (10, 0.0, 0.0),
        Unary::Exp => (11, 0.0, 0.0),
        Unary::Expm1 => (12, 0.0, 0.0),
        Unary::Erf => (13, 0.0, 0.0),
        Unary::Erfc => (14, 0.0, 0.0),
    }
}

/// `y = f(x)` element by element, in pieces that fit one binding.
pub fn encode_unary(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    u: Unary,
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<()> {
    check_unary(u)?;
    let total = x.numel();
    if total == 0 {
        return Ok(());
    }
    let sx = storage(shared, x);
    let (code, a, b) = unary_code(u);
    let pipeline = shared.kernels.get(
        shared,
        &format!("unary|{}", sx.key()),
        || {
            source(
                &[(sx, "x", 1)],
                &[
                    include_str!("../../../../shaders/activation_math.wgsl"),
                    include_str!("../../../../shaders/unary.wgsl"),
                ],
            )
        },
        &[("WG", f64::from(WG)), ("OP", f64::from(code))],
    )?;
    let block = Block {
        what: "element",
        bytes: &[sx.elem_bytes(), 4],
        items: 1,
        per_group: u64::from(WG),
    };
    let per = blocks_per_piece(shared, &block, total)?;
    let mut first = 0;
    while first < total {
        let count = per.min(total - first);
        let xw = window(shared, x, sx, first as u64, count as u64)?;
        let yw = window(shared, y, Storage::F32, first as u64, count as u64)?;
        let p = [
            dim_u32("elements", count as u64)?,
            xw.elem_offset,
            yw.elem_offset,
            f32_bits(a),
            f32_bits(b),
        ];
        rec.dispatch(
            &pipeline,
            &p,
            &[(1, xw.resource()), (2, yw.resource())],
            (count as u64).div_ceil(u64::from(WG)),
        )?;
        first += count;
    }
    Ok(())
}

/// A broadcast merged into its fewest dimensions: sizes (outermost first) and the element
/// strides of `a` and `b` along them (0 where an operand is broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broadcast {
    dims: Vec<usize>,
    a: Vec<usize>,
    b: Vec<usize>,
}

/// Plans the broadcast of `a_shape` and `b_shape` to `out`: drops unit dimensions and merges
/// neighbours that both operands walk as one; at least one dimension remains.
fn plan_broadcast(a_shape: &[usize], b_shape: &[usize], out: &[usize]) -> Broadcast {
    let rank = out.len();
    let strides = |shape: &[usize]| {
        let mut s = vec![0; rank];
        let mut acc = 1usize;
        for k in 0..rank {
            let d = if k < shape.len() {
                shape[shape.len() - 1 - k]
            } else {
                1
            };
            s[rank - 1 - k] = if d == 1 { 0 } else { acc };
            acc = acc.saturating_mul(d);
        }
        s
    };
    let (sa, sb) = (strides(a_shape), strides(b_shape));
    let mut plan = Broadcast {
        dims: Vec::new(),
        a: Vec::new(),
        b: Vec::new(),
    };
    for i in 0..rank {
        if out[i] == 1 {
            continue;
        }
        if let (Some(d), Some(a), Some(b)) =
            (plan.dims.last_mut(), plan.a.last_mut(), plan.b.last_mut())
            && *a == sa[i].saturating_mul(out[i])
            && *b == sb[i].saturating_mul(out[i])
        {
            *d = d.saturating_mul(out[i]);
            *a = sa[i];
            *b = sb[i];
            continue;
        }
        plan.dims.push(out[i]);
        plan.a.push(sa[i]);
        plan.b.push(sb[i]);
    }
    if plan.dims.is_empty() {
        plan = Broadcast {
            dims: vec![1],
            a: vec![0],
            b: vec![0],
        };
    }
    plan
}

/// The shader numbering of a binary op.
fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

/// `y = a ∘ b` with numpy broadcasting, in pieces of whole rows of the outermost merged
/// dimension; an operand broadcast along that dimension is bound whole in every piece.
pub fn encode_binary(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    op: BinaryOp,
    a: &GpuTensor,
    b: &GpuTensor,
    y: &GpuTensor,
) -> Result<()> {
    let out = binary_shape(op, &[a.shape(), b.shape()])?;
    let total = y.numel();
    if total == 0 {
        return Ok(());
    }
    let plan = plan_broadcast(a.shape().dims(), b.shape().dims(), &out);
    if plan.dims.len() > MAX_BROADCAST_RANK {
        return Err(Error::shape(
            op.name(),
            format!(
                "broadcasting {} with {} needs {} dimensions after merging, the GPU takes at \
                 most {MAX_BROADCAST_RANK}",
                a.shape(),
                b.shape(),
                plan.dims.len()
            ),
        ));
    }
    let (sa, sb) = (storage(shared, a), storage(shared, b));
    let pipeline = shared.kernels.get(
        shared,
        &format!("binary|{}|{}", sa.key(), sb.key()),
        || {
            source(
                &[(sa, "a", 1), (sb, "b", 2)],
                &[include_str!("../../../../shaders/binary.wgsl")],
            )
        },
        &[("WG", f64::from(WG)), ("OP", f64::from(binary_code(op)))],
    )?;
    // Pieces are runs of the outermost merged dimension: each operand's window starts at the
    // piece's first row (or at 0 where it is broadcast along that dimension) and spans the
    // rows plus the extent of the inner dimensions.
    let rows = plan.dims[0];
    let inner_out: u64 = plan.dims[1..].iter().map(|&d| d as u64).product();
    let extent = |s: &[usize]| -> u64 {
        1 + plan.dims[1..]
            .iter()
            .zip(&s[1..])
            .map(|(&d, &st)| (d as u64 - 1) * st as u64)
            .sum::<u64>()
    };
    let (ext_a, ext_b) = (extent(&plan.a), extent(&plan.b));
    let (s0a, s0b) = (plan.a[0] as u64, plan.b[0] as u64);
    // Bytes per row of each operand that is cut with the output (a broadcast one is bound
    // the same each piece and checked by its window).
    let row_bytes = |s0: u64, ext: u64, st: Storage| {
        if s0 == 0 {
            0
        } else {
            s0.max(ext) * st.elem_bytes()
        }
    };
    let block = Block {
        what: "row of the broadcast",
        bytes: &[
            row_bytes(s0a, ext_a, sa),
            row_bytes(s0b, ext_b, sb),
            inner_out * 4,
        ],
        items: inner_out,
        per_group: u64::from(WG),
    };
    let per = blocks_per_piece(shared, &block, rows)?;
    let mut first = 0;
    while first < rows {
        let count = per.min(rows - first);
        let span = |s0: u64, ext: u64| {
            if s0 == 0 {
                (0, ext)
            } else {
                (first as u64 * s0, (count as u64 - 1) * s0 + ext)
            }
        };
        let (a0, an) = span(s0a, ext_a);
        let (b0, bn) = span(s0b, ext_b);
        let aw = window(shared, a, sa, a0, an)?;
        let bw = window(shared, b, sb, b0, bn)?;
        let outputs = count as u64 * inner_out;
        let yw = window(shared, y, Storage::F32, first as u64 * inner_out, outputs)?;
        let mut p = vec![0u32; 23];
        p[0] = dim_u32("elements", outputs)?;
        p[1] = aw.elem_offset;
        p[2] = bw.elem_offset;
        p[3] = yw.elem_offset;
        p[4] = plan.dims.len() as u32;
        for (i, ((&d, &s_a), &s_b)) in plan.dims.iter().zip(&plan.a).zip(&plan.b).enumerate() {
            p[5 + i] = dim_u32("broadcast dimension", d as u64)?;
            p[11 + i] = dim_u32("stride of a", s_a as u64)?;
            p[17 + i] = dim_u32("stride of b", s_b as u64)?;
        }
        // The piece's rows are its own outermost dimension.
        p[5] = dim_u32("rows", count as u64)?;
        rec.dispatch(
            &pipeline,
            &p,
            &[(1, aw.resource()), (2, bw.resource()), (3, yw.resource())],
            outputs.div_ceil(u64::from(WG)),
        )?;
        first += count;
    }
    Ok(())
}

/// Softmax (or log-softmax) over rows of `n` elements `inner` apart, one workgroup per row;
/// pieces hold whole `[n, inner]` blocks.
pub fn encode_softmax(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    x: &GpuTensor,
    y: &GpuTensor,
    [outer, n, inner]: [usize; 3],
    log: bool,
) -> Result<()> {
    if x.numel() == 0 {
        return Ok(());
    }
    let sx = storage(shared, x);
    // Short rows get a smaller workgroup (a power of two, for the tree reductions).
    let wg = (n.next_power_of_two() as u32)
        .clamp(32, 256)
        .min(shared.ctx.limits.max_invocations.max(32));
    let pipeline = shared.kernels.get(
        shared,
        &format!("softmax|{}", sx.key()),
        || {
            source(
                &[(sx, "x", 1)],
                &[
                    include_str!("../../../../shaders/activation_math.wgsl"),
                    include_str!("../../../../shaders/softmax.wgsl"),
                ],
            )
        },
        &[("WG", f64::from(wg))],
    )?;
    let block = n as u64 * inner as u64;
    let piece = Block {
        what: "softmax block of [axis, inner axes]",
        bytes: &[block * sx.elem_bytes(), block * 4],
        items: 0,
        per_group: 1,
    };
    let per = blocks_per_piece(shared, &piece, outer)?;
    let dim = u64::from(shared.ctx.limits.max_workgroups_per_dim.max(1));
    let max_groups = dim.saturating_mul(dim).saturating_mul(dim);
    let mut first = 0;
    while first < outer {
        let count = per.min(outer - first);
        let (start, len) = (first as u64 * block, count as u64 * block);
        let xw = window(shared, x, sx, start, len)?;
        let yw = window(shared, y, Storage::F32, start, len)?;
        let rows = count as u64 * inner as u64;
        // One workgroup per row: rows beyond one dispatch's grid go in further dispatches
        // over the same windows.
        let mut row0 = 0;
        while row0 < rows {
            let groups = max_groups.min(rows - row0);
            let p = [
                dim_u32("rows", rows)?,
                dim_u32("softmax axis length", n as u64)?,
                dim_u32("inner size", inner as u64)?,
                xw.elem_offset,
                yw.elem_offset,
                u32::from(log),
                f32_bits(f32::NEG_INFINITY),
                dim_u32("first row", row0)?,
            ];
            rec.dispatch(
                &pipeline,
                &p,
                &[(1, xw.resource()), (2, yw.resource())],
                groups,
            )?;
            row0 += groups;
        }
        first += count;
    }
    Ok(())
}

/// Max or average pooling, one output per invocation; pieces hold whole channel planes.
#[allow(clippy::too_many_arguments)]
pub fn encode_pool2d(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    x: &GpuTensor,
    y: &GpuTensor,
    [n, c, h, w]: [usize; 4],
    [_, _, oh, ow]: [usize; 4],
    prm: &Pool2dParams,
    max: bool,
) -> Result<()> {
    let planes = n * c;
    if planes == 0 || oh == 0 || ow == 0 {
        return Ok(());
    }
    let sx = storage(shared, x);
    let pipeline = shared.kernels.get(
        shared,
        &format!("pool2d|{}", sx.key()),
        || {
            source(
                &[(sx, "x", 1)],
                &[include_str!("../../../../shaders/pool2d.wgsl")],
            )
        },
        &[("WG", f64::from(WG)), ("MODE", if max { 0.0 } else { 1.0 })],
    )?;
    let (in_plane, out_plane) = ((h * w) as u64, (oh * ow) as u64);
    let block = Block {
        what: "channel plane",
        bytes: &[in_plane * sx.elem_bytes(), out_plane * 4],
        items: out_plane,
        per_group: u64::from(WG),
    };
    let per = blocks_per_piece(shared, &block, planes)?;
    let geometry = [
        ("H", h),
        ("W", w),
        ("OH", oh),
        ("OW", ow),
        ("kernel", prm.kernel[0]),
        ("kernel", prm.kernel[1]),
        ("stride", prm.stride[0]),
        ("stride", prm.stride[1]),
        ("dilation", prm.dilation[0]),
        ("dilation", prm.dilation[1]),
        ("pad", prm.pads[0]),
        ("pad", prm.pads[1]),
        ("pad", prm.pads[2]),
        ("pad", prm.pads[3]),
    ];
    let mut first = 0;
    while first < planes {
        let count = per.min(planes - first);
        let xw = window(
            shared,
            x,
            sx,
            first as u64 * in_plane,
            count as u64 * in_plane,
        )?;
        let yw = window(
            shared,
            y,
            Storage::F32,
            first as u64 * out_plane,
            count as u64 * out_plane,
        )?;
        let outputs = count as u64 * out_plane;
        let mut p = vec![dim_u32("outputs", outputs)?, xw.elem_offset, yw.elem_offset];
        for (what, v) in geometry {
            // Window coordinates are signed 32-bit in the shader.
            if v > i32::MAX as usize / 4 {
                return Err(Error::overflow(
                    "gpu pooling",
                    format!("{what} = {v} exceeds the shader's 32-bit window arithmetic"),
                ));
            }
            p.push(v as u32);
        }
        p.push(u32::from(prm.count_include_pad));
        p.push(f32_bits(f32::NEG_INFINITY));
        rec.dispatch(
            &pipeline,
            &p,
            &[(1, xw.resource()), (2, yw.resource())],
            outputs.div_ceil(u64::from(WG)),
        )?;
        first += count;
    }
    Ok(())
}

/// The mean of each of `N·C` planes, one workgroup per plane; pieces hold whole planes.
pub fn encode_global_avg_pool(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    x: &GpuTensor,
    y: &GpuTensor,
    [n, c, plane]: [usize; 3],
) -> Result<()> {
    let planes = n * c;
    if planes == 0 {
        return Ok(());
    }
    let sx = storage(shared, x);
    let wg: u32 = if plane >= 1024 { 256 } else { 64 };
    let pipeline = shared.kernels.get(
        shared,
        &format!("global_pool|{}", sx.key()),
        || {
            source(
                &[(sx, "x", 1)],
                &[include_str!("../../../../shaders/global_pool.wgsl")],
            )
        },
        &[("WG", f64::from(wg))],
    )?;
    let block = Block {
        what: "channel plane",
        bytes: &[plane as u64 * sx.elem_bytes(), 4],
        items: 1,
        per_group: 1,
    };
    let per = blocks_per_piece(shared, &block, planes)?;
    let mut first = 0;
    while first < planes {
        let count = per.min(planes - first);
        let xw = window(
            shared,
            x,
            sx,
            first as u64 * plane as u64,
            count as u64 * plane as u64,
        )?;
        let yw = window(shared, y, Storage::F32, first as u64, count as u64)?;
        let p = [
            dim_u32("planes", count as u64)?,
            dim_u32("plane size", plane as u64)?,
            xw.elem_offset,
            yw.elem_offset,
        ];
        rec.dispatch(
            &pipeline,
            &p,
            &[(1, xw.resource()), (2, yw.resource())],
            count as u64,
        )?;
        first += count;
    }
    Ok(())
}

/// What a batch normalisation applies besides its per-channel parameters.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormSettings {
    /// Added to the variance.
    pub epsilon: f32,
    /// Whether a ReLU follows (NaN kept).
    pub relu: bool,
}

/// Batch normalisation (inference) of `x` `[N, C, plane]` with per-channel `[scale, bias,
/// mean, var]`; pieces hold whole planes. The GPU does not inspect `var + epsilon`: where it
/// is not positive the outputs are inf or NaN (the CPU node refuses such a variance).
pub fn encode_batch_norm(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    x: &GpuTensor,
    params: [&GpuTensor; 4],
    y: &GpuTensor,
    [n, c, plane]: [usize; 3],
    BatchNormSettings { epsilon, relu }: BatchNormSettings,
) -> Result<()> {
    let planes = n * c;
    if planes == 0 || plane == 0 {
        return Ok(());
    }
    let sx = storage(shared, x);
    let sp = params.map(|t| storage(shared, t));
    let names = ["scale", "bias", "mean", "var"];
    let key = format!(
        "batchnorm|{}|{}|{}|{}|{}|{relu}",
        sx.key(),
        sp[0].key(),
        sp[1].key(),
        sp[2].key(),
        sp[3].key()
    );
    let pipeline = shared.kernels.get(
        shared,
        &key,
        || {
            let mut loaders = vec![(sx, "x", 1)];
            loaders.extend((0..4).map(|i| (sp[i], names[i], i as u32 + 2)));
            source(
                &loaders,
                &[include_str!("../../../../shaders/batchnorm.wgsl")],
            )
        },
        &[("WG", f64::from(WG)), ("RELU", f64::from(u8::from(relu)))],
    )?;
    let pw = [0, 1, 2, 3]
        .map(|i| window(shared, params[i], sp[i], 0, c as u64))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let block = Block {
        what: "channel plane",
        bytes: &[plane as u64 * sx.elem_bytes(), plane as u64 * 4],
        items: plane as u64,
        per_group: u64::from(WG),
    };
    let per = blocks_per_piece(shared, &block, planes)?;
    let mut first = 0;
    while first < planes {
        let count = per.min(planes - first);
        let (start, len) = (first as u64 * plane as u64, count as u64 * plane as u64);
        let xw = window(shared, x, sx, start, len)?;
        let yw = window(shared, y, Storage::F32, start, len)?;
        let p = [
            dim_u32("elements", len)?,
            xw.elem_offset,
            yw.elem_offset,
            dim_u32("channels", c as u64)?,
            dim_u32("plane size", plane as u64)?,
            (first % c) as u32,
            f32_bits(epsilon),
            pw[0].elem_offset,
            pw[1].elem_offset,
            pw[2].elem_offset,
            pw[3].elem_offset,
        ];
        rec.dispatch(
            &pipeline,
            &p,
            &[
                (1, xw.resource()),
                (2, pw[0].resource()),
                (3, pw[1].resource()),
                (4, pw[2].resource()),
                (5, pw[3].resource()),
                (6, yw.resource()),
            ],
            len.div_ceil(u64::from(WG)),
        )?;
        first += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_merge_to_their_fewest_dimensions() {
        let same = plan_broadcast(&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]);
        assert_eq!(same.dims, [24]);
        assert_eq!((same.a[0], same.b[0]), (1, 1));
        let scalar = plan_broadcast(&[5, 7], &[], &[5, 7]);
        assert_eq!((scalar.dims.clone(), scalar.b[0]), (vec![35], 0));
        let channel = plan_broadcast(&[2, 3, 4, 5], &[3, 1, 1], &[2, 3, 4, 5]);
        assert_eq!(channel.dims, [2, 3, 20]);
        assert_eq!(channel.a, [60, 20, 1]);
        assert_eq!(channel.b, [0, 1, 0]);
        let outer = plan_broadcast(&[3, 1], &[1, 4], &[3, 4]);
        assert_eq!(
            (outer.dims, outer.a, outer.b),
            (vec![3, 4], vec![1, 0], vec![0, 1])
        );
        let ones = plan_broadcast(&[1, 1], &[1], &[1, 1]);
        assert_eq!(ones.dims, [1]);
    }
}
