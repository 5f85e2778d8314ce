//! The CPU node: a share of the host's cores (one rayon pool) running the SIMD kernels.

use std::sync::OnceLock;

use std::borrow::Cow;

use accelmesh_kernels::conv::{
    Conv2dParams, banding_pays, conv2d, conv2d_accumulate, conv2d_max_pool,
};
use accelmesh_kernels::elementwise::{binary_with_isa, unary_into_with_isa};
use accelmesh_kernels::gemm::may_split;
use accelmesh_kernels::norm::{self, BatchNorm};
use accelmesh_kernels::pool::{avg_pool2d_with_isa, global_average_pool, max_pool2d_with_isa};
use accelmesh_kernels::{Epilogue, Isa, MatMut, MatRef, gemm};
use half::{bf16, f16};

use super::{Device, DeviceInfo, DeviceKind, execute_view_by_copy};
use crate::op::{
    Conv2dDims, MatMulDims, Op, Pool2dParams, batch_norm_dims, conv2d_dims, global_pool_dims,
    matmul_dims, pool2d_dims, softmax_dims,
};
use crate::tensor::{DType, Shape, Tensor, TensorElement, TensorView};
use crate::{Error, Result};

/// Memory assumed when /proc/meminfo cannot be read: 4 GiB.
const FALLBACK_MEMORY_BYTES: u64 = 4 << 30;

/// Number of hardware threads of the host (1 if unknown).
pub fn host_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model from /proc/cpuinfo's `model name`, or `cpu` where there is none.
pub fn host_cpu_name() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == "model name" && !value.trim().is_empty())
                        .then(|| value.trim().to_string())
                })
            })
            .unwrap_or_else(|| "cpu".to_string())
    })
    .clone()
}

/// Total host memory from /proc/meminfo's `MemTotal`, in bytes, if it can be read.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(scale)
}

/// The memory share of one of `nodes` CPU nodes.
pub(crate) fn node_memory_bytes(nodes: usize) -> u64 {
    host_memory_bytes().unwrap_or(FALLBACK_MEMORY_BYTES) / nodes.max(1) as u64
}

/// A CPU node: owns a pool of worker threads and runs every op inside it.
///
/// Matrix multiplies and convolutions accept f32, f16 or bf16 inputs (all of one dtype) and
/// always return f32 outputs: the kernels widen half-precision operands and accumulate in f32.
/// A convolution bias may have any dtype; it is widened to f32. The elementwise, pooling and
/// normalisation ops widen every f16 / bf16 input to f32 first (inputs may differ in dtype).
///
/// A convolution may also be given a fourth input, a residual of the output's shape (any
/// dtype): the node then returns `relu?(conv + bias + residual)`, the residual added inside
/// the gemm (the ONNX executor fuses `Conv → Add → Relu` so).
pub struct CpuDevice {
    info: DeviceInfo,
    isa: Isa,
    pool: rayon::ThreadPool,
    /// The batches and pollers of `pool` ([`super::awake`]).
    awake: std::sync::Arc<super::awake::Awake>,
    /// The CPUs the workers are pinned to, worker by worker, if they are.
    cores: Option<Vec<core_affinity::CoreId>>,
    /// One single-threaded node per worker ([`Device::lanes`]), started on first use.
    lanes: OnceLock<Vec<CpuDevice>>,
}

impl CpuDevice {
    /// CPU node number `index` (id `cpu<index>`) with `threads` workers and a memory share,
    /// after `index` nodes of as many workers.
    pub fn new(index: usize, threads: usize, memory_bytes: u64) -> Result<CpuDevice> {
        let first = index.saturating_mul(threads);
        CpuDevice::of_mesh(index, first, threads, 1, memory_bytes)
    }

    /// CPU node number `index` of `nodes` CPU nodes brought up together, with `threads`
    /// workers after the `first` workers of the nodes before it (the workers of a mesh are
    /// pinned to consecutive CPUs, one-thread nodes included), and a memory share.
    pub fn of_mesh(
        index: usize,
        first: usize,
        threads: usize,
        nodes: usize,
        memory_bytes: u64,
    ) -> Result<CpuDevice> {
        let id = format!("cpu{index}");
        let cores = super::pin::cores_for(first, threads, nodes);
        CpuDevice::start(id, threads, cores, memory_bytes)
    }

    /// A node `id` of `threads` workers, worker `i` pinned to `cores[i]` if given.
    fn start(
        id: String,
        threads: usize,
        cores: Option<Vec<core_affinity::CoreId>>,
        memory_bytes: u64,
    ) -> Result<CpuDevice> {
        if threads == 0 {
            return Err(Error::device(id, "thread count must be at least 1"));
        }
        let pinned = cores.clone();
        let name = id.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("{name}-worker{i}"))
            .start_handler(move |i| super::pin::pin_worker(pinned.as_deref(), i))
            .build()
            .map_err(|e| Error::device(&id, format!("cannot start {threads} threads: {e}")))?;
        let isa = Isa::selected();
        Ok(CpuDevice {
            info: DeviceInfo {
                id,
                kind: DeviceKind::Cpu,
                name: host_cpu_name(),
                backend: isa.name().to_string(),
                threads: Some(threads),
                memory_bytes,
                dtypes: DType::ALL.to_vec(),
                driver: None,
            },
            isa,
            pool,
            awake: Default::default(),
            cores,
            lanes: OnceLock::new(),
        })
    }

    /// The single-threaded node of worker `i`: its own thread, on that worker's CPU where
    /// the workers are pinned, with an even share of the memory.
    fn lane(&self, i: usize) -> Result<CpuDevice> {
        let threads = self.pool.current_num_threads().max(1);
        let core = self.cores.as_ref().and_then(|c| c.get(i)).map(|&c| vec![c]);
        let id = format!("{}-lane{i}", self.info.id);
        CpuDevice::start(id, 1, core, self.info.memory_bytes / threads as u64)
    }

    /// A stand-alone CPU node (`cpu0`) with `threads` workers and all host memory.
    pub fn with_threads(threads: usize) -> Result<CpuDevice> {
        CpuDevice::new(0, threads, node_memory_bytes(1))
    }

    /// The kernels' instruction set this node uses.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs a validated matrix multiply of inputs stored as `T`.
    fn matmul<T: TensorElement>(
        &self,
        a: &TensorView<'_>,
        b: &TensorView<'_>,
        (trans_a, trans_b): (bool, bool),
        d: MatMulDims,
        out: &mut [f32],
    ) -> Result<()> {
        let (a, b) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
        let a = if trans_a {
            MatRef::row_major(a, d.k, d.m)?.t()
        } else {
            MatRef::row_major(a, d.m, d.k)?
        };
        let b = if trans_b {
            MatRef::row_major(b, d.n, d.k)?.t()
        } else {
            MatRef::row_major(b, d.k, d.n)?
        };
        let c = MatMut::row_major(out, d.m, d.n)?;
        let run = || gemm(self.isa, 1.0, a, b, 0.0, c, &Epilogue::NONE);
        if !may_split(self.isa, d.m, d.n, d.k) {
            // Single-threaded anyway: waking the pool would cost more than the product.
            run()?;
        } else {
            self.pool.install(run)?;
        }
        Ok(())
    }

    /// The convolution `conv_inputs` (`[x, w, bias?]`, with dims `d`) into `out`; with
    /// `accumulate`, added to what `out` holds (its residual).
    fn conv_into(
        &self,
        params: &Conv2dParams,
        d: &Conv2dDims,
        conv_inputs: &[TensorView<'_>],
        out: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        let (x, w) = (&conv_inputs[0], &conv_inputs[1]);
        let dtype = same_dtype("conv2d", ["input", "weight"], x.dtype(), w.dtype())?;
        let bias = match &conv_inputs[2..] {
            [b, ..] if d.has_bias => Some(b.data().widened()),
            _ => None,
        };
        let bias = bias.as_deref();
        match dtype {
            DType::F32 => self.conv::<f32>(x, w, bias, params, d, out, accumulate),
            DType::F16 => self.conv::<f16>(x, w, bias, params, d, out, accumulate),
            DType::BF16 => self.conv::<bf16>(x, w, bias, params, d, out, accumulate),
        }
    }

    /// A convolution `[x, w, bias?]` added into `output`, which holds its residual.
    fn conv_onto(
        &self,
        params: &Conv2dParams,
        inputs: &[&Tensor],
        output: &mut Tensor,
    ) -> Result<()> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let d = conv2d_dims(params, &shapes)?;
        if output.dims() != d.output || output.dtype() != DType::F32 {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "the residual output is {} {}, expected f32 {:?}",
                    output.dtype(),
                    output.shape(),
                    d.output
                ),
            ));
        }
        let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
        self.conv_onto_view(params, &views, output.as_f32_mut()?)
    }

    /// A convolution `[x, w, bias?]` on borrowed inputs added into `out`, which holds its
    /// residual (as many elements as the output has).
    fn conv_onto_view(
        &self,
        params: &Conv2dParams,
        inputs: &[TensorView<'_>],
        out: &mut [f32],
    ) -> Result<()> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let d = conv2d_dims(params, &shapes)?;
        let expected: usize = d.output.iter().product();
        if out.len() != expected {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "the residual holds {} elements, the output {:?} has {expected}",
                    out.len(),
                    d.output
                ),
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.conv_into(params, &d, inputs, out, true)
    }

    /// A convolution `[x, w, bias?]` (dims `d`) followed by the max pooling `pool`, banded so
    /// that the convolution's output stays in cache (`conv2d_max_pool`).
    fn conv_pooled(
        &self,
        params: &Conv2dParams,
        pool: &Pool2dParams,
        d: &Conv2dDims,
        inputs: &[&Tensor],
    ) -> Result<Tensor> {
        let shape = Op::MaxPool(*pool).output_shape(&[&Shape::new(d.output)])?;
        let mut out = Tensor::from_vec(shape.clone(), super::recycle::output_f32(shape.numel()?)?)?;
        let (x, w) = (inputs[0].view(), inputs[1].view());
        let bias = match inputs.get(2) {
            Some(b) if d.has_bias => Some(b.data().view().widened()),
            _ => None,
        };
        let bias = bias.as_deref();
        let y = out.as_f32_mut()?;
        match same_dtype("conv2d", ["input", "weight"], x.dtype(), w.dtype())? {
            DType::F32 => self.conv_pooled_as::<f32>(&x, &w, bias, params, pool, d, y),
            DType::F16 => self.conv_pooled_as::<f16>(&x, &w, bias, params, pool, d, y),
            DType::BF16 => self.conv_pooled_as::<bf16>(&x, &w, bias, params, pool, d, y),
        }?;
        Ok(out)
    }

    /// [`CpuDevice::conv_pooled`] on inputs stored as `T`, into `out`.
    #[allow(clippy::too_many_arguments)]
    fn conv_pooled_as<T: TensorElement>(
        &self,
        x: &TensorView<'_>,
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        params: &Conv2dParams,
        pool: &Pool2dParams,
        d: &Conv2dDims,
        out: &mut [f32],
    ) -> Result<()> {
        let (x, w) = (x.as_slice::<T>()?, w.as_slice::<T>()?);
        self.pool.install(|| {
            conv2d_max_pool(self.isa, x, d.input, w, d.weight, bias, params, pool, out)
        })?;
        Ok(())
    }

    /// Runs a validated convolution of inputs stored as `T`; with `accumulate`, the output
    /// starts as the residual (already copied into `out`) and gets the product added.
    #[allow(clippy::too_many_arguments)]
    fn conv<T: TensorElement>(
        &self,
        x: &TensorView<'_>,
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        params: &Conv2dParams,
        d: &Conv2dDims,
        out: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        let (x, w) = (x.as_slice::<T>()?, w.as_slice::<T>()?);
        let kernel = if accumulate {
            conv2d_accumulate::<T>
        } else {
            conv2d::<T>
        };
        self.pool
            .install(|| kernel(self.isa, x, d.input, w, d.weight, bias, params, out))?;
        Ok(())
    }
}

/// The elements of `t` as f32: borrowed when it is f32, widened otherwise.
fn f32_data(t: &Tensor) -> Cow<'_, [f32]> {
    t.data().view().widened()
}

/// The convolution's own input shapes and, for the CPU node's fused residual form
/// (`[x, w, bias, residual]` with a residual of the output's shape), the residual's shape.
/// Any other input list is returned whole, for `conv2d_dims` to judge.
fn split_residual<'a, 'b>(
    params: &Conv2dParams,
    shapes: &'a [&'b Shape],
) -> (&'a [&'b Shape], Option<&'b Shape>) {
    if let [conv @ .., residual] = shapes
        && shapes.len() == 4
        && conv2d_dims(params, conv).is_ok_and(|d| residual.dims() == d.output)
    {
        return (conv, Some(*residual));
    }
    (shapes, None)
}

/// Fails unless the dtypes `a` and `b` of two operands agree, naming both.
fn same_dtype(op: &str, names: [&str; 2], a: DType, b: DType) -> Result<DType> {
    if a != b {
        return Err(Error::dtype(
            op,
            format!(
                "{} is {a} but {} is {b}: both must have the same dtype",
                names[0], names[1],
            ),
        ));
    }
    Ok(a)
}

impl CpuDevice {
    /// The output shape of `op` on inputs of `shapes` (every output of a CPU op is f32).
    fn output_shape(op: &Op, shapes: &[&Shape]) -> Result<Shape> {
        Ok(match op {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, shapes)?;
                Shape::new([d.m, d.n])
            }
            Op::Conv2d(params) => {
                let (shapes, _) = split_residual(params, shapes);
                Shape::new(conv2d_dims(params, shapes)?.output)
            }
            _ => op.output_shape(shapes)?,
        })
    }

    /// A matmul or a convolution (with the fused residual input) on borrowed inputs into
    /// `out`, whose size the caller has checked.
    fn product_into(
        &self,
        op: &Op,
        inputs: &[TensorView<'_>],
        shapes: &[&Shape],
        out: &mut [f32],
    ) -> Result<()> {
        match op {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, shapes)?;
                let (a, b) = (&inputs[0], &inputs[1]);
                let t = (*trans_a, *trans_b);
                match same_dtype("matmul", ["A", "B"], a.dtype(), b.dtype())? {
                    DType::F32 => self.matmul::<f32>(a, b, t, d, out),
                    DType::F16 => self.matmul::<f16>(a, b, t, d, out),
                    DType::BF16 => self.matmul::<bf16>(a, b, t, d, out),
                }
            }
            Op::Conv2d(params) => {
                // A residual is only split off when it has the output's shape.
                let (conv_shapes, residual) = split_residual(params, shapes);
                let d = conv2d_dims(params, conv_shapes)?;
                if residual.is_some() {
                    out.copy_from_slice(&inputs[3].data().widened());
                }
                let conv_inputs = &inputs[..conv_shapes.len()];
                self.conv_into(params, &d, conv_inputs, out, residual.is_some())
            }
            _ => Err(Error::shape(op.name(), "not a matmul or a convolution")),
        }
    }
}

impl Device for CpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn run_batch(&self, body: &mut (dyn FnMut() + Send)) {
        super::awake::run_awake(&self.pool, &self.awake, body)
    }

    fn keep_awake(&self, body: &mut (dyn FnMut() + Send)) {
        super::awake::keep_awake(&self.pool, &self.awake, body)
    }

    fn run_beside(&self, work: &mut (dyn FnMut() + Send), here: &mut (dyn FnMut() + Send)) {
        self.pool.in_place_scope(|scope| {
            scope.spawn(|_| work());
            here();
        });
    }

    fn launch(&self, work: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<()> {
        // A panic escaping a job of the pool would abort the process: it ends the run
        // instead (the launcher then sees no answer), as it would end a thread of its own.
        self.pool.spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        });
        Ok(())
    }

    fn lanes(&self) -> Vec<&dyn Device> {
        if self.pool.current_num_threads() < 2 {
            return Vec::new();
        }
        // A lane that cannot start leaves the node without lanes: it then splits every op.
        let lanes = self.lanes.get_or_init(|| {
            (0..self.pool.current_num_threads())
                .map(|i| self.lane(i))
                .collect::<Result<Vec<_>>>()
                .unwrap_or_default()
        });
        lanes.iter().map(|l| l as &dyn Device).collect()
    }

    fn execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let shape = Self::output_shape(op, &shapes)?;
        let values = super::recycle::output_f32(shape.numel()?)?;
        let mut outputs = vec![Tensor::from_vec(shape, values)?];
        self.execute_into(op, inputs, &mut outputs)?;
        Ok(outputs)
    }

    fn conv_accumulate(
        &self,
        op: &Op,
        inputs: &[&Tensor],
        output: &mut Tensor,
    ) -> Option<Result<()>> {
        let Op::Conv2d(params) = op else {
            return None;
        };
        Some(self.conv_onto(params, inputs, output))
    }

    fn conv_accumulate_view(
        &self,
        op: &Op,
        inputs: &[TensorView<'_>],
        out: &mut [f32],
    ) -> Option<Result<()>> {
        let Op::Conv2d(params) = op else {
            return None;
        };
        Some(self.conv_onto_view(params, inputs, out))
    }

    fn conv_max_pool(
        &self,
        conv: &Op,
        pool: &Pool2dParams,
        inputs: &[&Tensor],
    ) -> Option<Result<Tensor>> {
        let Op::Conv2d(params) = conv else {
            return None;
        };
        // Shapes that do not fit are left to the convolution alone to report.
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let d = conv2d_dims(params, &shapes).ok()?;
        (inputs.len() <= 3 && banding_pays(d.output))
            .then(|| self.conv_pooled(params, pool, &d, inputs))
    }

    fn execute_view(&self, op: &Op, inputs: &[TensorView<'_>], out: &mut [f32]) -> Result<()> {
        if !matches!(op, Op::MatMul { .. } | Op::Conv2d(_)) {
            return execute_view_by_copy(self, op, inputs, out);
        }
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let shape = Self::output_shape(op, &shapes)?;
        if out.len() != shape.numel()? {
            return Err(Error::shape(
                op.name(),
                format!(
                    "the output {shape} does not fit the {} elements given",
                    out.len()
                ),
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.product_into(op, inputs, &shapes, out)
    }

    fn execute_into(&self, op: &Op, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<()> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let shape = Self::output_shape(op, &shapes)?;
        let [output] = outputs else {
            return Err(Error::shape(
                op.name(),
                format!("{} outputs given, the op has 1", outputs.len()),
            ));
        };
        if output.shape() != &shape || output.dtype() != DType::F32 {
            return Err(Error::shape(
                op.name(),
                format!(
                    "output is {} {}, expected f32 {shape}",
                    output.dtype(),
                    output.shape()
                ),
            ));
        }
        let out = output.as_f32_mut()?;
        if out.is_empty() {
            return Ok(());
        }
        match op {
            Op::MatMul { .. } | Op::Conv2d(_) => {
                let views: Vec<TensorView<'_>> = inputs.iter().map(|t| t.view()).collect();
                self.product_into(op, &views, &shapes, out)
            }
            _ => self.execute_f32(op, inputs, &shapes, out),
        }
    }
}

impl CpuDevice {
    /// Runs one of the elementwise, pooling or normalisation ops (inputs widened to f32) into
    /// `out`, whose shape the caller has checked.
    fn execute_f32(
        &self,
        op: &Op,
        inputs: &[&Tensor],
        shapes: &[&Shape],
        out: &mut [f32],
    ) -> Result<()> {
        let isa = self.isa;
        match op {
            Op::Unary(u) => {
                let x = f32_data(inputs[0]);
                self.pool
                    .install(|| unary_into_with_isa(*u, &x, out, isa))?;
            }
            Op::Binary(b) => {
                let (a, bv) = (f32_data(inputs[0]), f32_data(inputs[1]));
                let (sa, sb) = (shapes[0].dims(), shapes[1].dims());
                self.pool
                    .install(|| binary_with_isa(*b, &a, sa, &bv, sb, out, isa))?;
            }
            Op::Softmax { axis, log } => {
                softmax_dims(op.name(), *axis, shapes)?;
                let x = f32_data(inputs[0]);
                out.copy_from_slice(&x);
                let dims = shapes[0].dims();
                self.pool
                    .install(|| norm::softmax_inplace_with_isa(out, dims, *axis, *log, isa))?;
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let (dims, _) = pool2d_dims(op.name(), p, shapes)?;
                let x = f32_data(inputs[0]);
                let max = matches!(op, Op::MaxPool(_));
                self.pool.install(|| {
                    if max {
                        max_pool2d_with_isa(&x, dims, p, out, isa)
                    } else {
                        avg_pool2d_with_isa(&x, dims, p, out, isa)
                    }
                })?;
            }
            Op::GlobalAvgPool => {
                let [n, c, plane] = global_pool_dims(shapes)?;
                let x = f32_data(inputs[0]);
                self.pool
                    .install(|| global_average_pool(&x, [n, c, plane, 1], out))?;
            }
            Op::BatchNorm { epsilon, relu } => {
                batch_norm_dims(*epsilon, shapes)?;
                let x = f32_data(inputs[0]);
                let [scale, bias, mean, var] = [1, 2, 3, 4].map(|i| f32_data(inputs[i]));
                let p = BatchNorm {
                    scale: &scale,
                    bias: &bias,
                    mean: &mean,
                    var: &var,
                    epsilon: *epsilon,
                    relu: *relu,
                };
                let dims = shapes[0].dims();
                self.pool
                    .install(|| norm::batch_norm_with_isa(&x, dims, &p, out, isa))?;
            }
            Op::MatMul { .. } | Op::Conv2d(_) => {
                return Err(Error::shape(
                    op.name(),
                    "not an elementwise, pooling or normalisation op",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accelmesh_kernels::elementwise::{BinaryOp, Unary};
    use accelmesh_kernels::pool::Pool2dParams;

    #[test]
    fn info_describes_the_node() {
        let dev = CpuDevice::new(3, 2, 1 << 20).unwrap();
        let info = dev.info();
        assert_eq!(info.id, "cpu3");
        assert_eq!(info.threads, Some(2));
        assert_eq!(info.backend, Isa::selected().name());
        assert!(!info.name.is_empty());
        assert_eq!(info.dtypes, DType::ALL);
        assert!(CpuDevice::new(0, 0, 1).is_err());
    }

    /// `op` on `inputs` run into an output full of NaN gives bit for bit what it gives into
    /// a zeroed one: each kernel overwrites every element, which recycled outputs rely on.
    fn overwrites_every_element(dev: &CpuDevice, op: &Op, inputs: &[&Tensor]) {
        let expected = dev.execute(op, inputs).unwrap().remove(0);
        let garbage = vec![f32::NAN; expected.numel()];
        let mut outputs = [Tensor::from_vec(expected.shape().clone(), garbage).unwrap()];
        dev.execute_into(op, inputs, &mut outputs).unwrap();
        let bits = |t: &Tensor| {
            t.to_f32_vec()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&outputs[0]), bits(&expected), "{op:?}");
    }

    /// A convolution case: input dims, weight dims, stride, padding, groups.
    type Case = (&'static [usize], &'static [usize], usize, usize, usize);

    #[test]
    fn every_op_overwrites_a_reused_output() {
        let dev = CpuDevice::with_threads(2).unwrap();
        let t = |dims: &[usize], seed| Tensor::random(dims.to_vec(), DType::F32, seed).unwrap();
        let (a, b) = (t(&[7, 33], 1), t(&[33, 17], 2));
        overwrites_every_element(&dev, &Op::matmul(), &[&a, &b]);
        let conv = |stride, pad, groups| {
            Op::Conv2d(Conv2dParams {
                stride: [stride; 2],
                pads: [pad; 4],
                groups,
                relu: true,
                ..Conv2dParams::default()
            })
        };
        // The lanes path (7×7/2 over 3 channels), the flat tiles (3×3 over 17 channels, and a
        // pointwise widening on a 7×7 plane), the im2col gemm (strided 3×3), the plain gemm
        // (1×1) and the depthwise kernel; with a bias and a residual.
        let cases: [Case; 6] = [
            (&[1, 3, 33, 33], &[16, 3, 7, 7], 2, 3, 1),
            (&[1, 17, 17, 17], &[33, 17, 3, 3], 1, 1, 1),
            (&[1, 64, 7, 7], &[256, 64, 1, 1], 1, 0, 1),
            (&[2, 16, 15, 15], &[24, 16, 3, 3], 2, 1, 1),
            (&[1, 31, 9, 9], &[7, 31, 1, 1], 1, 0, 1),
            (&[1, 8, 17, 17], &[8, 1, 3, 3], 1, 1, 8),
        ];
        for (i, (x, w, stride, pad, groups)) in cases.into_iter().enumerate() {
            let seed = 10 * i as u64;
            let (x, w, bias) = (t(x, seed), t(w, seed + 1), t(&[w[0]], seed + 2));
            let op = conv(stride, pad, groups);
            overwrites_every_element(&dev, &op, &[&x, &w, &bias]);
            let out = dev.execute(&op, &[&x, &w, &bias]).unwrap().remove(0);
            let residual = t(out.dims(), seed + 3);
            overwrites_every_element(&dev, &op, &[&x, &w, &bias, &residual]);
        }
        let x = t(&[2, 5, 17, 13], 40);
        let row = t(&[13], 41);
        let channel = t(&[5], 42);
        for u in [Unary::Relu, Unary::Sigmoid, Unary::Tanh, Unary::Gelu] {
            overwrites_every_element(&dev, &Op::Unary(u), &[&x]);
        }
        for b in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Div] {
            overwrites_every_element(&dev, &Op::Binary(b), &[&x, &row]);
            overwrites_every_element(&dev, &Op::Binary(b), &[&x, &x]);
        }
        for log in [false, true] {
            overwrites_every_element(&dev, &Op::Softmax { axis: 3, log }, &[&x]);
            overwrites_every_element(&dev, &Op::Softmax { axis: 1, log }, &[&x]);
        }
        let pool = Pool2dParams {
            kernel: [3, 3],
            stride: [2, 2],
            pads: [1, 0, 1, 1],
            ceil_mode: true,
            ..Pool2dParams::new([3, 3])
        };
        let whole = Pool2dParams::new([17, 13]);
        for p in [pool, whole, Pool2dParams::new([2, 2])] {
            overwrites_every_element(&dev, &Op::MaxPool(p), &[&x]);
            overwrites_every_element(&dev, &Op::AvgPool(p), &[&x]);
        }
        overwrites_every_element(&dev, &Op::GlobalAvgPool, &[&x]);
        let var = Tensor::from_f32([5], DType::F32, &[0.5, 1.0, 2.0, 0.25, 3.0]).unwrap();
        for relu in [false, true] {
            let op = Op::BatchNorm {
                epsilon: 1e-5,
                relu,
            };
            overwrites_every_element(&dev, &op, &[&x, &channel, &channel, &channel, &var]);
        }
    }

    #[test]
    fn empty_products_are_empty() {
        let dev = CpuDevice::with_threads(1).unwrap();
        let a = Tensor::random([0, 4], DType::F32, 1).unwrap();
        let b = Tensor::random([4, 3], DType::F32, 2).unwrap();
        let out = dev.execute(&Op::matmul(), &[&a, &b]).unwrap();
        assert_eq!(out[0].dims(), [0, 3]);
    }
}
