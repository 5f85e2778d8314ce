//! Tiled matmul on the GPU: tile shapes, the split of an operand too large for one binding
//! into sub-dispatches, split-K with a reduction for skinny products, and the encoding.

use serde::{Deserialize, Serialize};

use super::{Recorder, Storage, Window, dim_u32, dummy_f32, f32_bits, window};
use crate::node::gpu::GpuShared;
use crate::node::gpu::tensor::GpuTensor;
use crate::{Error, Result};

/// One tiling of the GEMM kernel (WGSL override constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileConfig {
    /// Rows of C per workgroup.
    pub bm: u32,
    /// Columns of C per workgroup.
    pub bn: u32,
    /// Depth of one staged tile.
    pub bk: u32,
    /// Rows per invocation.
    pub tm: u32,
    /// Columns per invocation.
    pub tn: u32,
}

impl TileConfig {
    /// The tiling used before (or without) tuning.
    pub const DEFAULT: TileConfig = TileConfig::new(64, 64, 16, 4, 4);

    /// The tilings the tuner tries.
    pub const CANDIDATES: [TileConfig; 8] = [
        TileConfig::new(64, 64, 16, 4, 4),
        TileConfig::new(128, 128, 8, 8, 8),
        TileConfig::new(128, 128, 16, 8, 8),
        TileConfig::new(128, 64, 16, 8, 4),
        TileConfig::new(64, 128, 8, 4, 8),
        TileConfig::new(64, 64, 8, 8, 8),
        TileConfig::new(32, 32, 16, 4, 4),
        TileConfig::new(16, 16, 16, 2, 2),
    ];

    /// A tiling of `bm × bn` outputs per workgroup, `bk` deep, `tm × tn` per invocation.
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Self {
        TileConfig { bm, bn, bk, tm, tn }
    }

    /// Invocations per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Workgroup memory the tiles take, in bytes.
    pub fn workgroup_bytes(&self) -> u32 {
        (self.bm + self.bn) * self.bk * 4
    }

    /// Whether the kernel can take the tiling on any device: TM and TN from 1 to 8 dividing
    /// BM and BN, BK a multiple of 4 (at least 4), BN a multiple of 4.
    pub fn is_well_formed(&self) -> bool {
        (1..=8).contains(&self.tm)
            && (1..=8).contains(&self.tn)
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && self.bk >= 4
            && self.bk.is_multiple_of(4)
            && self.bn.is_multiple_of(4)
    }

    /// Whether the tiling is well formed and fits the device's limits.
    pub fn fits(&self, shared: &GpuShared) -> bool {
        let l = &shared.ctx.limits;
        self.is_well_formed()
            && self.threads() <= l.max_invocations
            && self.workgroup_bytes() <= l.max_workgroup_storage
    }

    /// The override constants of the GEMM shader.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("BM", f64::from(self.bm)),
            ("BN", f64::from(self.bn)),
            ("BK", f64::from(self.bk)),
            ("TM", f64::from(self.tm)),
            ("TN", f64::from(self.tn)),
            ("WG", f64::from(self.threads())),
            ("A_TILE", f64::from(self.bk * self.bm)),
            ("B_TILE", f64::from(self.bk * self.bn)),
        ]
    }
}

/// How a bias is added in the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasKind {
    /// One value per row of C.
    Row,
    /// One value per column of C.
    Col,
}

/// `C = alpha · op(A) · op(B) + beta · C (+ bias) (ReLU)` on device-resident operands.
pub struct MatmulArgs<'a> {
    /// A, stored `[M, K]` (or `[K, M]` with `trans_a`).
    pub a: &'a GpuTensor,
    /// B, stored `[K, N]` (or `[N, K]` with `trans_b`).
    pub b: &'a GpuTensor,
    /// C, f32 `[M, N]`.
    pub c: &'a GpuTensor,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Reduced dimension.
    pub k: usize,
    /// A is stored transposed.
    pub trans_a: bool,
    /// B is stored transposed.
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C (0: C is not read).
    pub beta: f32,
    /// Optional f32 bias.
    pub bias: Option<(&'a GpuTensor, BiasKind)>,
    /// ReLU after the bias.
    pub relu: bool,
}

/// Sub-problem counts along M, N and K so that every binding fits the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pieces {
    /// Pieces along M.
    pub m: usize,
    /// Pieces along N.
    pub n: usize,
    /// Pieces along K.
    pub k: usize,
}

/// Elements a row-major `[rows_total, cols_total]` block of `rows × cols` spans in memory.
fn span(rows: usize, cols: usize, cols_total: usize) -> u64 {
    if rows == 0 || cols == 0 {
        return 0;
    }
    (rows as u64 - 1) * cols_total as u64 + cols as u64
}

/// Plans how many pieces along each dimension keep every operand window within
/// `max_binding` bytes; `ea`, `eb` are A's and B's element sizes (C is f32).
pub fn plan_pieces(
    dims: (usize, usize, usize),
    trans: (bool, bool),
    elem: (u64, u64),
    max_binding: u64,
    slack: u64,
) -> Pieces {
    let (m, n, k) = dims;
    let (ta, tb) = trans;
    let (ea, eb) = elem;
    let mut p = Pieces { m: 1, n: 1, k: 1 };
    let fits = |bytes: u64| bytes + slack <= max_binding;
    loop {
        let bm = m.div_ceil(p.m);
        let bn = n.div_ceil(p.n);
        let bk = k.div_ceil(p.k);
        let a = if ta { span(bk, bm, m) } else { span(bm, bk, k) } * ea;
        let b = if tb { span(bn, bk, k) } else { span(bk, bn, n) } * eb;
        let c = span(bm, bn, n) * 4;
        let grow = |count: usize, size: usize| if size > 1 { count * 2 } else { count };
        if !fits(c) {
            if bm > 1 {
                p.m = grow(p.m, bm);
            } else {
                p.n = grow(p.n, bn);
            }
        } else if !fits(a) {
            match (ta, bm > 1, bk > 1) {
                (false, true, _) | (true, true, false) => p.m = grow(p.m, bm),
                _ => p.k = grow(p.k, bk),
            }
        } else if !fits(b) {
            match (tb, bk > 1, bn > 1) {
                (false, true, _) | (true, false, true) => p.k = grow(p.k, bk),
                _ => p.n = grow(p.n, bn),
            }
        } else {
            return p;
        }
        if bm <= 1 && bn <= 1 && bk <= 1 {
            return p;
        }
    }
}

/// The number of K splits (with a reduction after) that keeps a skinny product busy: few
/// output tiles and a deep K. 1 means no split.
pub fn split_k_count(m: usize, n: usize, k: usize, tile: TileConfig) -> usize {
    let tiles = m.div_ceil(tile.bm as usize) * n.div_ceil(tile.bn as usize);
    if tiles >= 32 || k < 1024 || k < 4 * m.max(n) {
        return 1;
    }
    let by_depth = k / 256;
    let by_occupancy = 64usize.div_ceil(tiles.max(1));
    by_depth.min(by_occupancy).clamp(1, 32)
}

/// The depth of each of about `splits` K splits of `depth`, rounded up to a multiple of
/// `align` (so that every split starts aligned for vector loads), and how many splits that
/// makes.
pub fn split_depth(depth: usize, splits: usize, align: usize) -> (usize, usize) {
    let chunk = depth
        .div_ceil(splits.max(1))
        .next_multiple_of(align.max(1))
        .max(1);
    (chunk, depth.div_ceil(chunk).max(1))
}

/// An f32 buffer for `splits` partial products of `rows × cols`, on `like`'s device.
pub fn partial_buffer(
    like: &GpuTensor,
    splits: usize,
    rows: usize,
    cols: usize,
) -> Result<GpuTensor> {
    GpuTensor::empty(
        like.shared(),
        crate::tensor::Shape::new([splits, rows, cols]),
        crate::tensor::DType::F32,
    )
}

/// `bias`'s binding, or the placeholder `dummy` where there is none.
pub fn bias_binding<'a>(
    bias: Option<&Window<'a>>,
    dummy: &'a wgpu::Buffer,
) -> wgpu::BindingResource<'a> {
    match bias {
        Some(w) => w.resource(),
        None => dummy.as_entire_binding(),
    }
}

/// The WGSL of the tiled GEMM for operand storages `sa`, `sb`, a variant
/// (`gemm_dense.wgsl` or `gemm_conv.wgsl`) and a tiling: the body's register tile is
/// written out for `tile.tm × tile.tn` (see [`register_tile`]).
pub fn gemm_source(sa: Storage, sb: Storage, variant: &str, tile: TileConfig) -> String {
    let mut s = String::new();
    if sa == Storage::F16Native || sb == Storage::F16Native {
        s.push_str("enable f16;\n");
    }
    s.push_str(include_str!("../../../../shaders/gemm_common.wgsl"));
    s.push_str(&sa.loader("a", 1));
    s.push_str(&sb.loader("b", 2));
    s.push_str(variant);
    s.push_str(&register_tile(
        include_str!("../../../../shaders/gemm_tiled.wgsl"),
        tile.tm,
        tile.tn,
    ));
    s
}

/// `body` (`gemm_tiled.wgsl`) with its register tile written out for `tm × tn` outputs per
/// invocation: named accumulators (`//@ACCUMULATORS`), the unrolled multiply-adds of one
/// depth step (`//@FMA_TILE`) and one store per output (`//@STORE_TILE`). Written-out
/// scalars stay in registers, where an array indexed in a loop may be put in local memory.
pub fn register_tile(body: &str, tm: u32, tn: u32) -> String {
    use std::fmt::Write;
    let (mut acc, mut fma, mut store) = (String::new(), String::new(), String::new());
    for i in 0..tm {
        let _ = writeln!(fma, "let a{i} = a_tile[a_row + {i}u * threads_m];");
    }
    for j in 0..tn {
        let _ = writeln!(fma, "let b{j} = b_tile[b_row + {j}u * threads_n];");
    }
    for i in 0..tm {
        for j in 0..tn {
            let _ = writeln!(acc, "var acc_{i}_{j} = 0.0;");
            let _ = writeln!(fma, "acc_{i}_{j} = fma(a{i}, b{j}, acc_{i}_{j});");
            let _ = writeln!(
                store,
                "store_c(row0 + {i}u * threads_m, col0 + {j}u * threads_n, z, acc_{i}_{j}, \
                 alpha, beta, flags);"
            );
        }
    }
    body.replace("//@ACCUMULATORS", &acc)
        .replace("//@FMA_TILE", &fma)
        .replace("//@STORE_TILE", &store)
}

/// Encodes `args` with tiling `tile`, split into sub-dispatches where an operand exceeds
/// the binding limit, and into K splits plus a reduction for skinny shapes.
pub fn encode_matmul(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &MatmulArgs<'_>,
    tile: TileConfig,
) -> Result<()> {
    let (m, n, k) = (args.m, args.n, args.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !tile.fits(shared) {
        return Err(Error::device(
            &shared.ctx.id,
            format!("tiling {tile:?} does not fit the device's workgroup limits"),
        ));
    }
    let native = shared.ctx.has_f16();
    let sa = Storage::of(args.a.dtype(), native);
    let sb = Storage::of(args.b.dtype(), native);
    let slack = shared.ctx.limits.storage_offset_alignment + 16;
    let pieces = plan_pieces(
        (m, n, k),
        (args.trans_a, args.trans_b),
        (sa.elem_bytes(), sb.elem_bytes()),
        shared.ctx.limits.max_storage_binding,
        slack,
    );
    let dummy = dummy_f32(shared);
    let bm = m.div_ceil(pieces.m);
    let bn = n.div_ceil(pieces.n);
    let bk = k.div_ceil(pieces.k).max(1);
    let single = pieces == Pieces { m: 1, n: 1, k: 1 };
    let gemv = bm <= GEMV_MAX_ROWS;
    let splits = match (single, gemv) {
        (false, _) => 1,
        (true, true) => gemv_split_count(n, k, gemv_cols(args.trans_b, n)),
        (true, false) => split_k_count(m, n, k, tile),
    };
    for mi in 0..pieces.m {
        let m0 = mi * bm;
        let m1 = (m0 + bm).min(m);
        if m0 >= m1 {
            continue;
        }
        for ni in 0..pieces.n {
            let n0 = ni * bn;
            let n1 = (n0 + bn).min(n);
            if n0 >= n1 {
                continue;
            }
            for ki in 0..pieces.k.max(1) {
                let k0 = (ki * bk).min(k);
                let k1 = (k0 + bk).min(k);
                if k0 >= k1 && !(k == 0 && ki == 0) {
                    continue;
                }
                let first = ki == 0;
                let piece = Piece {
                    m0,
                    m1,
                    n0,
                    n1,
                    k0,
                    k1,
                    first,
                    last: k1 >= k,
                };
                if gemv {
                    encode_gemv(shared, rec, args, &piece, splits, sa, sb, &dummy)?;
                } else if splits > 1 {
                    encode_split_k(shared, rec, args, tile, &piece, splits, sa, sb, &dummy)?;
                } else {
                    encode_piece(shared, rec, args, tile, &piece, sa, sb, &dummy)?;
                }
            }
        }
    }
    Ok(())
}

/// Whether an f32 operand window can be read as vec4 words: its fast dimension is
/// contiguous, and its offset and row stride are multiples of four elements.
pub fn vec4_ok(storage: Storage, elem_offset: u32, row_stride: u32, col_stride: u32) -> bool {
    storage == Storage::F32
        && col_stride == 1
        && elem_offset.is_multiple_of(4)
        && row_stride.is_multiple_of(4)
}

/// The dense GEMM pipeline for these storages, vector loads and tiling.
fn dense_pipeline(
    shared: &GpuShared,
    sa: Storage,
    sb: Storage,
    vec: (bool, bool),
    tile: TileConfig,
) -> Result<std::sync::Arc<wgpu::ComputePipeline>> {
    let la = if vec.0 { Storage::F32Vec4 } else { sa };
    let lb = if vec.1 { Storage::F32Vec4 } else { sb };
    let key = format!("gemm_dense|{}|{}", la.key(), lb.key());
    let mut constants = tile.constants();
    constants.push(("VEC_A", f64::from(u8::from(vec.0))));
    constants.push(("VEC_B", f64::from(u8::from(vec.1))));
    shared.kernels.get(
        shared,
        &key,
        || {
            gemm_source(
                la,
                lb,
                include_str!("../../../../shaders/gemm_dense.wgsl"),
                tile,
            )
        },
        &constants,
    )
}

/// One sub-problem: rows `m0..m1`, columns `n0..n1`, depth `k0..k1` of the whole product.
#[derive(Debug, Clone, Copy)]
struct Piece {
    m0: usize,
    m1: usize,
    n0: usize,
    n1: usize,
    k0: usize,
    k1: usize,
    /// The first depth piece: applies the caller's beta; later ones accumulate.
    first: bool,
    /// The last depth piece: applies bias and ReLU.
    last: bool,
}

/// Windows of A and B for `piece`, with their element offsets and strides.
struct OperandWindows<'a> {
    a: Window<'a>,
    a_rs: u32,
    a_cs: u32,
    b: Window<'a>,
    b_rs: u32,
    b_cs: u32,
}

fn operand_windows<'a>(
    shared: &GpuShared,
    args: &MatmulArgs<'a>,
    piece: &Piece,
    sa: Storage,
    sb: Storage,
) -> Result<OperandWindows<'a>> {
    let (m, n, k) = (args.m as u64, args.n as u64, args.k as u64);
    let (m0, m1, n0, n1, k0, k1) = (
        piece.m0 as u64,
        piece.m1 as u64,
        piece.n0 as u64,
        piece.n1 as u64,
        piece.k0 as u64,
        piece.k1 as u64,
    );
    let kk = (k1 - k0).max(1);
    let (a_first, a_count, a_rs, a_cs) = if args.trans_a {
        (k0 * m + m0, (kk - 1) * m + (m1 - m0), 1, m)
    } else {
        (m0 * k + k0, (m1 - m0 - 1) * k + kk, k, 1)
    };
    let (b_first, b_count, b_rs, b_cs) = if args.trans_b {
        (n0 * k + k0, (n1 - n0 - 1) * k + kk, 1, k)
    } else {
        (k0 * n + n0, (kk - 1) * n + (n1 - n0), n, 1)
    };
    Ok(OperandWindows {
        a: window(shared, args.a, sa, a_first, a_count)?,
        a_rs: dim_u32("A stride", a_rs)?,
        a_cs: dim_u32("A stride", a_cs)?,
        b: window(shared, args.b, sb, b_first, b_count)?,
        b_rs: dim_u32("B stride", b_rs)?,
        b_cs: dim_u32("B stride", b_cs)?,
    })
}

/// Records one dispatch in the binding layout of `gemm_common.wgsl`: A and B from `ops`, the
/// output window `out` (C or the split partials), and the bias (or its placeholder).
fn dispatch_product(
    rec: &mut Recorder<'_>,
    pipeline: &wgpu::ComputePipeline,
    params: &[u32],
    ops: &OperandWindows<'_>,
    out: &Window<'_>,
    bias: wgpu::BindingResource<'_>,
    groups: u64,
) -> Result<()> {
    rec.dispatch(
        pipeline,
        params,
        &[
            (1, ops.a.resource()),
            (2, ops.b.resource()),
            (3, out.resource()),
            (4, bias),
        ],
        groups,
    )
}

/// Parameter words of one GEMM dispatch (layout of `gemm_common.wgsl`).
#[allow(clippy::too_many_arguments)]
fn gemm_params(
    rows: u32,
    cols: u32,
    depth: u32,
    ops: &OperandWindows<'_>,
    c_off: u32,
    c_rs: u32,
    tile: TileConfig,
    z: u32,
    alpha: f32,
    beta: f32,
    flags: u32,
    bias_off: u32,
    k_chunk: u32,
    c_zs: u32,
) -> (Vec<u32>, u64) {
    let tiles_n = cols.div_ceil(tile.bn);
    let tiles_m = rows.div_ceil(tile.bm);
    let total = u64::from(tiles_n) * u64::from(tiles_m) * u64::from(z);
    let mut p = vec![0u32; 36];
    p[0] = rows;
    p[1] = cols;
    p[2] = depth;
    p[3] = ops.a.elem_offset;
    p[4] = ops.a_rs;
    p[5] = ops.a_cs;
    p[6] = ops.b.elem_offset;
    p[7] = ops.b_rs;
    p[8] = ops.b_cs;
    p[9] = c_off;
    p[10] = c_rs;
    p[11] = tiles_n;
    p[12] = tiles_m;
    p[13] = total.min(u64::from(u32::MAX)) as u32;
    p[14] = f32_bits(alpha);
    p[15] = f32_bits(beta);
    let mut f = flags;
    if ops.a_cs == 1 {
        f |= 16;
    }
    if ops.b_cs == 1 {
        f |= 32;
    }
    p[16] = f;
    p[17] = bias_off;
    p[18] = k_chunk;
    p[19] = c_zs;
    (p, total)
}

/// Epilogue flags and bias window for `piece`.
fn epilogue<'a>(
    shared: &GpuShared,
    args: &MatmulArgs<'a>,
    piece: &Piece,
    include_bias: bool,
) -> Result<(u32, f32, Option<Window<'a>>, u32)> {
    let mut flags = 0u32;
    let beta = if piece.first { args.beta } else { 1.0 };
    if beta != 0.0 {
        flags |= 8;
    }
    let mut bias_window = None;
    let mut bias_off = 0;
    if piece.last && include_bias {
        if args.relu {
            flags |= 1;
        }
        if let Some((bias, kind)) = args.bias {
            let (first, count) = match kind {
                BiasKind::Row => (piece.m0, piece.m1 - piece.m0),
                BiasKind::Col => (piece.n0, piece.n1 - piece.n0),
            };
            flags |= if kind == BiasKind::Row { 2 } else { 4 };
            let w = window(shared, bias, Storage::F32, first as u64, count as u64)?;
            bias_off = w.elem_offset;
            bias_window = Some(w);
        }
    }
    Ok((flags, beta, bias_window, bias_off))
}

#[allow(clippy::too_many_arguments)]
fn encode_piece(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &MatmulArgs<'_>,
    tile: TileConfig,
    piece: &Piece,
    sa: Storage,
    sb: Storage,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let ops = operand_windows(shared, args, piece, sa, sb)?;
    let vec = (
        vec4_ok(sa, ops.a.elem_offset, ops.a_rs, ops.a_cs),
        vec4_ok(sb, ops.b.elem_offset, ops.b_rs, ops.b_cs),
    );
    let pipeline = dense_pipeline(shared, sa, sb, vec, tile)?;
    let rows = piece.m1 - piece.m0;
    let cols = piece.n1 - piece.n0;
    let n_total = args.n as u64;
    let c_first = piece.m0 as u64 * n_total + piece.n0 as u64;
    let c_count = (rows as u64 - 1) * n_total + cols as u64;
    let c = window(shared, args.c, Storage::F32, c_first, c_count)?;
    let (flags, beta, bias, bias_off) = epilogue(shared, args, piece, true)?;
    let depth = dim_u32("K", (piece.k1 - piece.k0) as u64)?;
    let (params, groups) = gemm_params(
        dim_u32("M", rows as u64)?,
        dim_u32("N", cols as u64)?,
        depth,
        &ops,
        c.elem_offset,
        dim_u32("N", n_total)?,
        tile,
        1,
        args.alpha,
        beta,
        flags,
        bias_off,
        depth.max(1),
        0,
    );
    let bias_res = bias_binding(bias.as_ref(), dummy);
    dispatch_product(rec, &pipeline, &params, &ops, &c, bias_res, groups)
}

#[allow(clippy::too_many_arguments)]
fn encode_split_k(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &MatmulArgs<'_>,
    tile: TileConfig,
    piece: &Piece,
    splits: usize,
    sa: Storage,
    sb: Storage,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let (m, n, k) = (args.m, args.n, args.k);
    // Whole tiles per split, so every split starts at a multiple of four (vector loads).
    let (chunk, splits) = split_depth(k, splits, tile.bk as usize);
    let partial = partial_buffer(args.c, splits, m, n)?;
    let ops = operand_windows(shared, args, piece, sa, sb)?;
    let vec = (
        vec4_ok(sa, ops.a.elem_offset, ops.a_rs, ops.a_cs),
        vec4_ok(sb, ops.b.elem_offset, ops.b_rs, ops.b_cs),
    );
    let pipeline = dense_pipeline(shared, sa, sb, vec, tile)?;
    let pw = window(shared, &partial, Storage::F32, 0, (splits * m * n) as u64)?;
    let (params, groups) = gemm_params(
        dim_u32("M", m as u64)?,
        dim_u32("N", n as u64)?,
        dim_u32("K", k as u64)?,
        &ops,
        pw.elem_offset,
        dim_u32("N", n as u64)?,
        tile,
        splits as u32,
        1.0,
        0.0,
        0,
        0,
        dim_u32("K", chunk as u64)?,
        dim_u32("M·N", (m * n) as u64)?,
    );
    dispatch_product(
        rec,
        &pipeline,
        &params,
        &ops,
        &pw,
        dummy.as_entire_binding(),
        groups,
    )?;
    encode_reduce(shared, rec, args, piece, &pw, splits, dummy)?;
    // The partial buffer returns to the pool only after the submission is recorded; the
    // queue orders later reuse after this work.
    rec.keep_alive(partial);
    Ok(())
}

/// Products of at most this many rows run as matrix-vector products: B, the large operand,
/// is streamed once instead of through a GEMM tile mostly empty of rows.
pub const GEMV_MAX_ROWS: usize = 8;

/// Invocations per matrix-vector workgroup.
const GEMV_THREADS: u32 = 256;

/// Columns one matrix-vector workgroup owns for `n` columns: few when B is stored transposed
/// (each column's depth is contiguous and spread over many invocations), many when B's
/// columns are contiguous and there are enough of them (each invocation reads its own
/// column, neighbours read neighbouring words); few again for a narrow B, so that most
/// invocations have a column.
pub fn gemv_cols(trans_b: bool, n: usize) -> u32 {
    if trans_b || n < 512 { 8 } else { 64 }
}

/// K splits (partials summed after) that give a matrix-vector product about 512 workgroups,
/// each split at least 512 deep; 1 means no split.
pub fn gemv_split_count(n: usize, k: usize, cols: u32) -> usize {
    let groups = n.div_ceil(cols as usize).max(1);
    let by_occupancy = 512usize.div_ceil(groups);
    let by_depth = k / 512;
    by_occupancy.min(by_depth).clamp(1, 32)
}

/// The WGSL of the matrix-vector kernel for operand storages `sa`, `sb` and `rows` rows of
/// A, with one named accumulator per row.
pub fn gemv_source(sa: Storage, sb: Storage, rows: u32) -> String {
    use std::fmt::Write;
    let (mut acc, mut vec_step, mut scalar_step, mut save) =
        (String::new(), String::new(), String::new(), String::new());
    for r in 0..rows {
        let _ = writeln!(acc, "var acc_{r} = 0.0;");
        let _ = writeln!(vec_step, "acc_{r} += dot(load_a4(a_index({r}u, k, z)), b);");
        let _ = writeln!(
            scalar_step,
            "acc_{r} = fma(load_a(a_index({r}u, kk, z)), b, acc_{r});"
        );
        let _ = writeln!(save, "sums[{r}u * WG + lid] = acc_{r};");
    }
    let mut s = String::new();
    if sa == Storage::F16Native || sb == Storage::F16Native {
        s.push_str("enable f16;\n");
    }
    s.push_str(include_str!("../../../../shaders/gemm_common.wgsl"));
    s.push_str(&sa.loader("a", 1));
    s.push_str(&sb.loader("b", 2));
    s.push_str(include_str!("../../../../shaders/gemm_dense.wgsl"));
    s.push_str(
        &include_str!("../../../../shaders/gemv.wgsl")
            .replace("//@ACCUMULATORS", &acc)
            .replace("//@VEC_STEP", &vec_step)
            .replace("//@SCALAR_STEP", &scalar_step)
            .replace("//@SAVE", &save),
    );
    s
}

/// One piece of a product of at most [`GEMV_MAX_ROWS`] rows, in `splits` K splits (a single
/// piece only) with a reduction after when more than one.
#[allow(clippy::too_many_arguments)]
fn encode_gemv(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &MatmulArgs<'_>,
    piece: &Piece,
    splits: usize,
    sa: Storage,
    sb: Storage,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let rows = piece.m1 - piece.m0;
    let cols = piece.n1 - piece.n0;
    let depth = piece.k1 - piece.k0;
    let ops = operand_windows(shared, args, piece, sa, sb)?;
    // Vector loads along the depth: both operands k fast and aligned.
    // One row: A's row stride is never used.
    let a_rs = if rows == 1 { 0 } else { ops.a_rs };
    let vec = vec4_ok(sa, ops.a.elem_offset, a_rs, ops.a_cs)
        && vec4_ok(sb, ops.b.elem_offset, ops.b_cs, ops.b_rs);
    let (la, lb) = if vec {
        (Storage::F32Vec4, Storage::F32Vec4)
    } else {
        (sa, sb)
    };
    let n_cols = gemv_cols(args.trans_b, args.n);
    let key = format!("gemv|{}|{}|{rows}", la.key(), lb.key());
    let pipeline = shared.kernels.get(
        shared,
        &key,
        || gemv_source(la, lb, rows as u32),
        &[
            ("COLS", f64::from(n_cols)),
            ("WG", f64::from(GEMV_THREADS)),
            ("SUMS", f64::from(GEMV_THREADS) * rows as f64),
            ("VEC", f64::from(u8::from(vec))),
        ],
    )?;
    // The grid: column groups of `n_cols`, one row of them (every row in one workgroup).
    let grid = TileConfig::new(GEMV_MAX_ROWS as u32, n_cols, 4, 1, 1);
    let n_total = args.n as u64;
    let bias_res;
    let partial;
    let (c, c_rs, c_zs, chunk, alpha, beta, flags, bias_off);
    if splits > 1 {
        // Whole vec4 words per split, so every split starts aligned.
        let (size, count) = split_depth(depth, splits, 4);
        partial = Some(partial_buffer(args.c, count, rows, cols)?);
        let t = partial.as_ref().expect("just made");
        c = window(shared, t, Storage::F32, 0, (count * rows * cols) as u64)?;
        (c_rs, c_zs, chunk) = (cols, rows * cols, size);
        (alpha, beta, flags, bias_off) = (1.0, 0.0, 0, 0);
        bias_res = dummy.as_entire_binding();
    } else {
        partial = None;
        let c_first = piece.m0 as u64 * n_total + piece.n0 as u64;
        let c_count = (rows as u64 - 1) * n_total + cols as u64;
        c = window(shared, args.c, Storage::F32, c_first, c_count)?;
        (c_rs, c_zs, chunk) = (args.n, 0, depth.max(1));
        let (f, b, bias, off) = epilogue(shared, args, piece, true)?;
        (alpha, beta, flags, bias_off) = (args.alpha, b, f, off);
        bias_res = bias_binding(bias.as_ref(), dummy);
    }
    let z = depth.max(1).div_ceil(chunk);
    let (params, groups) = gemm_params(
        dim_u32("M", rows as u64)?,
        dim_u32("N", cols as u64)?,
        dim_u32("K", depth as u64)?,
        &ops,
        c.elem_offset,
        dim_u32("N", c_rs as u64)?,
        grid,
        dim_u32("K splits", z as u64)?,
        alpha,
        beta,
        flags,
        bias_off,
        dim_u32("K", chunk as u64)?,
        dim_u32("M·N", c_zs as u64)?,
    );
    dispatch_product(rec, &pipeline, &params, &ops, &c, bias_res, groups)?;
    if partial.is_some() {
        encode_reduce(shared, rec, args, piece, &c, z, dummy)?;
    }
    if let Some(t) = partial {
        // Back to the pool only after the submission is recorded (the queue orders reuse).
        rec.keep_alive(t);
    }
    Ok(())
}

/// Sums `splits` partial products `[splits, M, N]` in `partial` into C with the epilogue
/// (alpha, beta, bias, ReLU) of `piece`.
fn encode_reduce(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    args: &MatmulArgs<'_>,
    piece: &Piece,
    pw: &Window<'_>,
    splits: usize,
    dummy: &wgpu::Buffer,
) -> Result<()> {
    let (m, n) = (args.m, args.n);
    let c = window(shared, args.c, Storage::F32, 0, (m * n) as u64)?;
    let (flags, beta, bias, bias_off) = epilogue(shared, args, piece, true)?;
    let bias_res = bias_binding(bias.as_ref(), dummy);
    encode_sum_partials(
        shared,
        rec,
        &SumPartials {
            partial: pw,
            splits,
            m,
            n,
            c: &c,
            c_rs: n,
            alpha: args.alpha,
            beta,
            flags,
            bias: (bias_res, bias_off),
        },
    )
}

/// A split-K reduction: `C[m, n] = alpha · Σ_s partial[s, m, n] (+ beta · C) (+ bias) (ReLU)`.
pub struct SumPartials<'a, 'b> {
    /// The partials, `[splits, m, n]` from the window's element offset on.
    pub partial: &'b Window<'a>,
    /// Number of partial slices.
    pub splits: usize,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// C's window (the first element at its element offset).
    pub c: &'b Window<'a>,
    /// C's row stride in elements.
    pub c_rs: usize,
    /// Scale of the sum.
    pub alpha: f32,
    /// Scale of the old C (read when flag bit 3 is set).
    pub beta: f32,
    /// Epilogue flags of `gemm_common.wgsl` (ReLU, row or column bias, read C).
    pub flags: u32,
    /// The bias binding and its element offset.
    pub bias: (wgpu::BindingResource<'a>, u32),
}

/// Encodes the reduction `r` with `splitk_reduce.wgsl`.
pub fn encode_sum_partials(
    shared: &GpuShared,
    rec: &mut Recorder<'_>,
    r: &SumPartials<'_, '_>,
) -> Result<()> {
    let reduce = shared.kernels.get(
        shared,
        "splitk_reduce",
        || include_str!("../../../../shaders/splitk_reduce.wgsl").to_string(),
        &[("WG", 256.0)],
    )?;
    let total = dim_u32("M·N", (r.m * r.n) as u64)?;
    let params = vec![
        dim_u32("M", r.m as u64)?,
        dim_u32("N", r.n as u64)?,
        dim_u32("K splits", r.splits as u64)?,
        r.c.elem_offset,
        dim_u32("C row stride", r.c_rs as u64)?,
        f32_bits(r.alpha),
        f32_bits(r.beta),
        r.flags,
        r.bias.1,
        total,
        r.partial.elem_offset,
    ];
    rec.dispatch(
        &reduce,
        &params,
        &[
            (1, r.partial.resource()),
            (2, r.bias.0.clone()),
            (3, r.c.resource()),
        ],
        u64::from(total).div_ceil(256),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fit_the_binding() {
        let max = 1 << 16;
        for &(m, n, k) in &[
            (300usize, 200usize, 100usize),
            (1, 5000, 3000),
            (4000, 1, 50),
            (129, 257, 33),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let p = plan_pieces((m, n, k), (ta, tb), (4, 2), max, 272);
                    let (bm, bn, bk) = (m.div_ceil(p.m), n.div_ceil(p.n), k.div_ceil(p.k));
                    let a = if ta { span(bk, bm, m) } else { span(bm, bk, k) } * 4;
                    let b = if tb { span(bn, bk, k) } else { span(bk, bn, n) } * 2;
                    let c = span(bm, bn, n) * 4;
                    for bytes in [a, b, c] {
                        assert!(bytes + 272 <= max, "{m} {n} {k} {ta} {tb} {p:?}");
                    }
                }
            }
        }
        assert_eq!(
            plan_pieces((64, 64, 64), (false, false), (4, 4), 1 << 20, 272),
            Pieces { m: 1, n: 1, k: 1 }
        );
    }

    #[test]
    fn matrix_vector_columns_and_splits() {
        assert_eq!(gemv_cols(true, 4096), 8);
        assert_eq!(gemv_cols(false, 4096), 64);
        assert_eq!(gemv_cols(false, 17), 8);
        // VGG-19's first classifier layer: 512 column groups already, no split.
        assert_eq!(gemv_split_count(4096, 25088, 8), 1);
        // ResNet-50's classifier: 125 groups, split in 4.
        assert_eq!(gemv_split_count(1000, 2048, 8), 4);
        // Shallow products never split; deep narrow ones at most 32 ways.
        assert_eq!(gemv_split_count(1, 300, 8), 1);
        assert_eq!(gemv_split_count(1, 1 << 20, 8), 32);
    }

    #[test]
    fn split_k_only_for_skinny_deep_products() {
        let t = TileConfig::DEFAULT;
        assert_eq!(split_k_count(1024, 1024, 1024, t), 1);
        assert_eq!(split_k_count(64, 64, 100, t), 1);
        assert!(split_k_count(64, 64, 8192, t) > 1);
        assert!(split_k_count(1, 10, 100_000, t) <= 32);
    }
}
