//! Host tensors: a [`Shape`], a [`DType`] and row-major storage of f32, f16 or bf16 values.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use accelmesh_kernels::Element;
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{Error, Result};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16: the top half of an f32.
    BF16,
}

impl DType {
    /// Every dtype, widest first.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// The lower-case name used on the command line and in reports (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes one element occupies.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Parses `f32`, `f16` or `bf16` (case-insensitive, surrounding blanks ignored).
    pub fn parse(name: &str) -> Result<DType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            _ => Err(Error::UnknownDType(name.to_string())),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;

    fn from_str(s: &str) -> Result<DType> {
        DType::parse(s)
    }
}

/// The dimensions of a tensor, outermost first (row-major).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: Vec<usize>,
}

impl Shape {
    /// A shape with these dimensions (a rank-0 shape holds one element).
    pub fn new(dims: impl Into<Vec<usize>>) -> Shape {
        Shape { dims: dims.into() }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of elements, or an error naming the shape if the product of its non-zero
    /// dimensions overflows `usize` (so every partial product of a valid shape fits).
    pub fn numel(&self) -> Result<usize> {
        let nonzero = self
            .dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
            .ok_or_else(|| {
                Error::overflow("shape", format!("element count of {self} exceeds usize"))
            })?;
        Ok(if self.dims.contains(&0) { 0 } else { nonzero })
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Shape {
        Shape::new(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Shape {
        Shape::new(dims)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Shape {
        Shape::new(dims)
    }
}

/// The storage of a tensor: one vector of the tensor's element type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

impl TensorData {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Rust scalar type a tensor can hold: `f32`, `half::f16` or `half::bf16`.
pub trait TensorElement: Element {
    /// The dtype of this scalar type.
    const DTYPE: DType;

    /// Wraps a vector as tensor storage.
    fn into_data(values: Vec<Self>) -> TensorData;

    /// Borrows the storage as this type, if it has this dtype.
    fn slice_of(data: &TensorData) -> Option<&[Self]> {
        Self::view_of(data.view())
    }

    /// Borrows a view's elements as this type, if it has this dtype.
    fn view_of(data: ViewData<'_>) -> Option<&[Self]>;
}

impl TensorElement for f32 {
    const DTYPE: DType = DType::F32;

    fn into_data(values: Vec<Self>) -> TensorData {
        TensorData::F32(values)
    }

    fn view_of(data: ViewData<'_>) -> Option<&[Self]> {
        match data {
            ViewData::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl TensorElement for f16 {
    const DTYPE: DType = DType::F16;

    fn into_data(values: Vec<Self>) -> TensorData {
        TensorData::F16(values)
    }

    fn view_of(data: ViewData<'_>) -> Option<&[Self]> {
        match data {
            ViewData::F16(v) => Some(v),
            _ => None,
        }
    }
}

impl TensorElement for bf16 {
    const DTYPE: DType = DType::BF16;

    fn into_data(values: Vec<Self>) -> TensorData {
        TensorData::BF16(values)
    }

    fn view_of(data: ViewData<'_>) -> Option<&[Self]> {
        match data {
            ViewData::BF16(v) => Some(v),
            _ => None,
        }
    }
}

/// Converts f32 values to any tensor element type, rounding to nearest even.
fn narrow<T: TensorElement>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&v| T::from_f32(v)).collect()
}

/// Widens any tensor element type to f32 (exact).
fn widen<T: TensorElement>(values: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    T::widen_slice(values, &mut out);
    out
}

/// A vector of `count` copies of `value`, or an error instead of an abort if memory runs out.
pub(crate) fn try_filled<T: Clone>(count: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count).map_err(|_| {
        Error::overflow(
            "allocation",
            format!(
                "cannot allocate {count} elements of {} bytes",
                std::mem::size_of::<T>()
            ),
        )
    })?;
    v.resize(count, value);
    Ok(v)
}

/// `count` f32 zeros from the allocator's zeroed memory (no fill pass), or an error instead of
/// an abort if memory runs out: output buffers that a kernel then overwrites.
pub(crate) fn try_zeros_f32(count: usize) -> Result<Vec<f32>> {
    accelmesh_kernels::buffer::try_zeroed_f32(count).ok_or_else(|| {
        Error::overflow(
            "allocation",
            format!("cannot allocate {count} elements of 4 bytes"),
        )
    })
}

/// `count` seeded uniform values in [-1, 1) that stay below 1 after rounding to `T`.
fn uniform<T: TensorElement>(count: usize, seed: u64) -> Result<Vec<T>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = try_filled(count, T::from_f32(0.0))?;
    for slot in &mut values {
        *slot = loop {
            let v = T::from_f32(rng.random_range(-1.0f32..1.0));
            if v.to_f32() < 1.0 {
                break v;
            }
        };
    }
    Ok(values)
}

/// An n-dimensional array in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Shape,
    data: TensorData,
}

impl Tensor {
    /// A tensor over `data`, which must hold exactly as many elements as `shape` has.
    pub fn from_data(shape: impl Into<Shape>, data: TensorData) -> Result<Tensor> {
        let shape = shape.into();
        let numel = shape.numel()?;
        if data.len() != numel {
            return Err(Error::shape(
                "tensor construction",
                format!(
                    "shape {shape} has {numel} elements but {} {} values were given",
                    data.len(),
                    data.dtype()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor over a vector of f32, f16 or bf16 values, checked against `shape`.
    pub fn from_vec<T: TensorElement>(shape: impl Into<Shape>, values: Vec<T>) -> Result<Tensor> {
        Tensor::from_data(shape, T::into_data(values))
    }

    /// A tensor of `dtype` holding `values` rounded to that dtype.
    pub fn from_f32(shape: impl Into<Shape>, dtype: DType, values: &[f32]) -> Result<Tensor> {
        let data = match dtype {
            DType::F32 => TensorData::F32(values.to_vec()),
            DType::F16 => TensorData::F16(narrow(values)),
            DType::BF16 => TensorData::BF16(narrow(values)),
        };
        Tensor::from_data(shape, data)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, dtype, 0.0)
    }

    /// A tensor with every element equal to `value` (rounded to `dtype`).
    pub fn full(shape: impl Into<Shape>, dtype: DType, value: f32) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.numel()?;
        let data = match dtype {
            DType::F32 => TensorData::F32(try_filled(n, value)?),
            DType::F16 => TensorData::F16(try_filled(n, f16::from_f32(value))?),
            DType::BF16 => TensorData::BF16(try_filled(n, bf16::from_f32(value))?),
        };
        Ok(Tensor { shape, data })
    }

    /// A tensor of seeded uniform values in [-1, 1): the same seed gives the same tensor.
    pub fn random(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.numel()?;
        let data = match dtype {
            DType::F32 => TensorData::F32(uniform(n, seed)?),
            DType::F16 => TensorData::F16(uniform(n, seed)?),
            DType::BF16 => TensorData::BF16(uniform(n, seed)?),
        };
        Ok(Tensor { shape, data })
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions (shorthand for `shape().dims()`).
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Bytes of storage the elements occupy.
    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype().size_bytes()
    }

    /// The storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Takes the storage out of the tensor.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The elements as a slice of `T`, or a dtype error if the tensor holds another type.
    pub fn as_slice<T: TensorElement>(&self) -> Result<&[T]> {
        T::slice_of(&self.data).ok_or_else(|| wrong_dtype(&self.shape, self.dtype(), T::DTYPE))
    }

    /// The elements as f32, or a dtype error if the tensor is not f32.
    pub fn as_f32(&self) -> Result<&[f32]> {
        self.as_slice::<f32>()
    }

    /// The elements as mutable f32, or a dtype error if the tensor is not f32.
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(values) => Ok(values),
            other => Err(wrong_dtype(&self.shape, other.dtype(), DType::F32)),
        }
    }

    /// The elements as f16, or a dtype error if the tensor is not f16.
    pub fn as_f16(&self) -> Result<&[f16]> {
        self.as_slice::<f16>()
    }

    /// The elements as bf16, or a dtype error if the tensor is not bf16.
    pub fn as_bf16(&self) -> Result<&[bf16]> {
        self.as_slice::<bf16>()
    }

    /// The elements widened to f32 (exact for every dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.view().widened().into_owned()
    }

    /// The elements widened to f64 (exact for every dtype), for reference computations.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.to_f32_vec().into_iter().map(f64::from).collect()
    }

    /// A copy converted to `dtype`, rounding to nearest even when narrowing.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let wide = self.to_f32_vec();
        let data = match dtype {
            DType::F32 => TensorData::F32(wide),
            DType::F16 => TensorData::F16(narrow(&wide)),
            DType::BF16 => TensorData::BF16(narrow(&wide)),
        };
        Tensor {
            shape: self.shape.clone(),
            data,
        }
    }

    /// The same elements under a new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let numel = shape.numel()?;
        if numel != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {shape} ({numel} elements)",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            data: self.data,
        })
    }

    /// A copy of the elements whose index along `dim` lies in `start..start + len`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let dims = self.dims();
        let Some(&extent) = dims.get(dim) else {
            return Err(Error::shape(
                "narrow",
                format!("dimension {dim} does not exist in shape {}", self.shape),
            ));
        };
        if start.checked_add(len).is_none_or(|end| end > extent) {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{start}+{len} exceeds dimension {dim} of shape {} ({extent})",
                    self.shape
                ),
            ));
        }
        let inner: usize = dims[dim + 1..].iter().product();
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(narrow_vec(v, extent, inner, start, len)),
            TensorData::F16(v) => TensorData::F16(narrow_vec(v, extent, inner, start, len)),
            TensorData::BF16(v) => TensorData::BF16(narrow_vec(v, extent, inner, start, len)),
        };
        let mut new_dims = dims.to_vec();
        new_dims[dim] = len;
        Tensor::from_data(new_dims, data)
    }

    /// Joins tensors of one dtype along `dim`; every other dimension must agree.
    pub fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            return Err(Error::shape("concat", "no tensors to join"));
        };
        let dims = first.dims();
        if dim >= dims.len() {
            return Err(Error::shape(
                "concat",
                format!("dimension {dim} does not exist in shape {}", first.shape),
            ));
        }
        let mut total = 0usize;
        for p in parts {
            if p.dtype() != first.dtype() {
                return Err(Error::dtype(
                    "concat",
                    format!("cannot join {} with {}", first.dtype(), p.dtype()),
                ));
            }
            let same_rest = p.rank() == dims.len()
                && p.dims()
                    .iter()
                    .zip(dims)
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !same_rest {
                return Err(Error::shape(
                    "concat",
                    format!(
                        "shapes {} and {} differ outside dimension {dim}",
                        first.shape, p.shape
                    ),
                ));
            }
            total = total
                .checked_add(p.dims()[dim])
                .ok_or_else(|| Error::overflow("concat", "joined dimension exceeds usize"))?;
        }
        let outer: usize = dims[..dim].iter().product();
        let inner: usize = dims[dim + 1..].iter().product();
        let data = match first.dtype() {
            DType::F32 => TensorData::F32(join::<f32>(parts, dim, outer, inner)?),
            DType::F16 => TensorData::F16(join::<f16>(parts, dim, outer, inner)?),
            DType::BF16 => TensorData::BF16(join::<bf16>(parts, dim, outer, inner)?),
        };
        let mut new_dims = dims.to_vec();
        new_dims[dim] = total;
        Tensor::from_data(new_dims, data)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// The whole tensor, borrowed.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: self.shape.clone(),
            data: self.data.view(),
        }
    }

    /// The elements `start..start + numel(shape)` of the storage, borrowed with `shape`: a
    /// contiguous block such as a range of rows, images or output channels.
    pub fn view_run(&self, shape: Shape, start: usize) -> Result<TensorView<'_>> {
        let numel = shape.numel()?;
        let end = start.checked_add(numel).filter(|&end| end <= self.numel());
        let Some(end) = end else {
            return Err(Error::shape(
                "tensor view",
                format!(
                    "{shape} at element {start} runs past the end of a tensor of shape {}",
                    self.shape
                ),
            ));
        };
        let data = match &self.data {
            TensorData::F32(v) => ViewData::F32(&v[start..end]),
            TensorData::F16(v) => ViewData::F16(&v[start..end]),
            TensorData::BF16(v) => ViewData::BF16(&v[start..end]),
        };
        Ok(TensorView { shape, data })
    }
}

impl TensorData {
    /// The storage, borrowed.
    pub fn view(&self) -> ViewData<'_> {
        match self {
            TensorData::F32(v) => ViewData::F32(v),
            TensorData::F16(v) => ViewData::F16(v),
            TensorData::BF16(v) => ViewData::BF16(v),
        }
    }
}

/// Borrowed tensor storage: a slice of the tensor's element type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ViewData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl<'a> ViewData<'a> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            ViewData::F32(_) => DType::F32,
            ViewData::F16(_) => DType::F16,
            ViewData::BF16(_) => DType::BF16,
        }
    }

    /// The elements as f32: borrowed when they are f32, widened otherwise (exact).
    pub fn widened(self) -> Cow<'a, [f32]> {
        match self {
            ViewData::F32(v) => Cow::Borrowed(v),
            ViewData::F16(v) => Cow::Owned(widen(v)),
            ViewData::BF16(v) => Cow::Owned(widen(v)),
        }
    }
}

/// The error for a tensor of `shape` holding `have` where `want` was asked for.
fn wrong_dtype(shape: &Shape, have: DType, want: DType) -> Error {
    Error::dtype(
        "tensor access",
        format!("tensor of shape {shape} holds {have}, not {want}"),
    )
}

/// A borrowed tensor: a shape over a contiguous run of another tensor's elements, so a part
/// of a split job reads its slice in place instead of a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    shape: Shape,
    data: ViewData<'a>,
}

impl<'a> TensorView<'a> {
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The borrowed storage.
    pub fn data(&self) -> ViewData<'a> {
        self.data
    }

    /// The elements as a slice of `T`, or a dtype error if the view holds another type.
    pub fn as_slice<T: TensorElement>(&self) -> Result<&'a [T]> {
        T::view_of(self.data).ok_or_else(|| wrong_dtype(&self.shape, self.dtype(), T::DTYPE))
    }

    /// The elements widened to f32 (exact for every dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.widened().into_owned()
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let data = match self.data {
            ViewData::F32(v) => TensorData::F32(v.to_vec()),
            ViewData::F16(v) => TensorData::F16(v.to_vec()),
            ViewData::BF16(v) => TensorData::BF16(v.to_vec()),
        };
        Tensor::from_data(self.shape.clone(), data)
    }
}

/// Joins the `T` storage of `parts` along `dim` (dtypes and shapes already checked).
fn join<T: TensorElement>(
    parts: &[&Tensor],
    dim: usize,
    outer: usize,
    inner: usize,
) -> Result<Vec<T>> {
    let views = parts
        .iter()
        .map(|p| Ok((p.as_slice::<T>()?, p.dims()[dim])))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat_vecs(&views, outer, inner))
}

/// The elements of a row-major `[outer, len_all, inner]` view whose middle index is in
/// `start..start + len`.
fn narrow_vec<T: Copy>(v: &[T], len_all: usize, inner: usize, start: usize, len: usize) -> Vec<T> {
    let block = len_all * inner;
    if block == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(v.len() / len_all.max(1) * len);
    for chunk in v.chunks_exact(block) {
        out.extend_from_slice(&chunk[start * inner..(start + len) * inner]);
    }
    out
}

/// Interleaves row-major `[outer, len_i, inner]` parts into `[outer, Σ len_i, inner]`.
fn concat_vecs<T: Copy>(parts: &[(&[T], usize)], outer: usize, inner: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|(v, _)| v.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (v, len) in parts {
            let block = len * inner;
            out.extend_from_slice(&v[o * block..(o + 1) * block]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for dtype in DType::ALL {
            assert_eq!(DType::parse(dtype.name()).unwrap(), dtype);
        }
        assert!(matches!(DType::parse("f64"), Err(Error::UnknownDType(s)) if s == "f64"));
    }

    #[test]
    fn numel_overflow_is_an_error() {
        let shape = Shape::new([usize::MAX, 2]);
        let err = shape.numel().unwrap_err();
        assert!(err.to_string().contains(&usize::MAX.to_string()));
        assert!(Shape::new([0, usize::MAX, 2]).numel().is_err());
        assert_eq!(Shape::new([0, usize::MAX]).numel().unwrap(), 0);
    }

    #[test]
    fn random_stays_in_range_for_every_dtype() {
        for dtype in DType::ALL {
            let t = Tensor::random([4096], dtype, 3).unwrap();
            assert!(t.to_f32_vec().iter().all(|v| (-1.0..1.0).contains(v)));
        }
    }
}
