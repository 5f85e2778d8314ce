//! float64 references shared by the node tests.
#![allow(dead_code)]

use accelmesh::{Conv2dParams, Tensor};

/// Largest allowed |out − ref| / Σ|a·b| per element (f32 accumulation).
pub const TOL: f64 = 1e-5;

/// Element (i, j) of the logical operand held row-major with `stored_cols` columns, stored
/// transposed when `trans`.
pub fn at(v: &[f64], trans: bool, stored_cols: usize, i: usize, j: usize) -> f64 {
    if trans {
        v[j * stored_cols + i]
    } else {
        v[i * stored_cols + j]
    }
}

/// Asserts `out` matches a reference given per element as (value, Σ|terms|).
pub fn assert_close(what: &str, out: &Tensor, reference: &[(f64, f64)]) {
    assert_close_tol(what, out, reference, TOL);
}

/// Like [`assert_close`] with tolerance `tol`.
pub fn assert_close_tol(what: &str, out: &Tensor, reference: &[(f64, f64)], tol: f64) {
    let got = out.as_f32().expect("outputs are f32");
    assert_eq!(got.len(), reference.len(), "{what}: output length");
    for (i, (&g, &(r, scale))) in got.iter().zip(reference).enumerate() {
        let err = (f64::from(g) - r).abs() / scale.max(f64::MIN_POSITIVE);
        assert!(
            err <= tol || (f64::from(g) - r).abs() < 1e-30,
            "{what}: element {i} is {g}, reference {r} (rel err {err:e})"
        );
    }
}

/// f64 reference of `op(a)·op(b)` from the (dtype-rounded) tensors.
pub fn matmul_ref(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Vec<(f64, f64)> {
    let (ad, bd) = (a.dims(), b.dims());
    let (m, k) = if ta { (ad[1], ad[0]) } else { (ad[0], ad[1]) };
    let n = if tb { bd[0] } else { bd[1] };
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sc) = (0.0, 0.0);
            for p in 0..k {
                let t = at(&av, ta, ad[1], i, p) * at(&bv, tb, bd[1], p, j);
                s += t;
                sc += t.abs();
            }
            out.push((s, sc));
        }
    }
    out
}

/// f64 reference of a convolution (NCHW, OIHW), bias and ReLU included.
pub fn conv_ref(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
) -> Vec<(f64, f64)> {
    let [n, c, h, wd]: [usize; 4] = x.dims().try_into().unwrap();
    let [o, cg, kh, kw]: [usize; 4] = w.dims().try_into().unwrap();
    let oh = (h + p.pads[0] + p.pads[2] - (kh - 1) * p.dilation[0] - 1) / p.stride[0] + 1;
    let ow = (wd + p.pads[1] + p.pads[3] - (kw - 1) * p.dilation[1] - 1) / p.stride[1] + 1;
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let bv = bias.map(Tensor::to_f64_vec);
    let og = o / p.groups;
    let mut out = Vec::with_capacity(n * o * oh * ow);
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for y in 0..oh {
                for xo in 0..ow {
                    let (mut s, mut sc) = bv.as_ref().map_or((0.0, 0.0), |v| (v[oc], v[oc].abs()));
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.pads[0] as isize;
                                let ix = (xo * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * c + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                let t = xv[xi] * wv[((oc * cg + ci) * kh + ky) * kw + kx];
                                s += t;
                                sc += t.abs();
                            }
                        }
                    }
                    if p.relu && s < 0.0 {
                        s = 0.0;
                    }
                    out.push((s, sc));
                }
            }
        }
    }
    out
}

/// `n` CPU nodes of one thread each, with 1 GiB of memory.
pub fn cpu_nodes(n: usize) -> Vec<std::sync::Arc<dyn accelmesh::Device>> {
    (0..n)
        .map(|i| {
            std::sync::Arc::new(accelmesh::CpuDevice::new(i, 1, 1 << 30).unwrap())
                as std::sync::Arc<dyn accelmesh::Device>
        })
        .collect()
}

/// Gives `key` a rate of `gflops` (and 10 µs of overhead) for every op class and dtype.
pub fn set_all_rates(perf: &mut accelmesh::drac::perf_model::PerfModel, key: &str, gflops: f64) {
    use accelmesh::drac::perf_model::{OpClass, Rate};
    for class in [OpClass::MatMul, OpClass::Conv2d, OpClass::Other] {
        for dtype in accelmesh::DType::ALL {
            perf.set_rate(key, class, dtype, Rate::new(gflops, 1e-5).unwrap());
        }
    }
}
