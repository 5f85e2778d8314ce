// Split-K reduction: C[m, n] = alpha · Σ_s partial[s, m, n] (+ beta · C) (+ bias) (ReLU).
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read> bias_buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> c_buf: array<f32>;

// p: 0 M, 1 N, 2 splits, 3 C offset, 4 C row stride, 5 alpha, 6 beta, 7 flags, 8 bias offset,
//    9 total elements (M·N), 10 partials offset
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + (wid.y + wid.z * nwg.y) * nwg.x) * WG + lid;
    let total = p[9];
    if (idx >= total) {
        return;
    }
    let n_cols = p[1];
    let m = idx / n_cols;
    let n = idx - m * n_cols;
    var s = 0.0;
    for (var z = 0u; z < p[2]; z++) {
        s += partial[p[10] + z * total + idx];
    }
    let ci = p[3] + m * p[4] + n;
    let flags = p[7];
    var v = bitcast<f32>(p[5]) * s;
    if ((flags & 8u) != 0u) {
        v += bitcast<f32>(p[6]) * c_buf[ci];
    }
    if ((flags & 2u) != 0u) {
        v += bias_buf[p[8] + m];
    }
    if ((flags & 4u) != 0u) {
        v += bias_buf[p[8] + n];
    }
    if ((flags & 1u) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    c_buf[ci] = v;
}
