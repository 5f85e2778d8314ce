// Softmax / log-softmax along one axis: one workgroup per row (a row is n elements `inner`
// apart), with shared-memory reductions of the maximum and of Σ e^(x - max). Subtracting the
// maximum keeps e^(x - max) ≤ 1; NaN in a row makes the row NaN. Needs activation_math.wgsl
// and a loader `load_x` at binding 1.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(2) var<storage, read_write> y_buf: array<f32>;

// p: 0 rows, 1 n (row length), 2 inner (stride between a row's elements), 3 X offset,
//    4 Y offset, 5 log flag, 6 -inf (f32 bits), 7 row of the dispatch's first workgroup
override WG: u32 = 256u; // a power of two

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = p[7] + wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (row >= p[0]) {
        return;
    }
    let n = p[1];
    let inner = p[2];
    let base = (row / inner) * n * inner + row % inner;
    // Maximum (NaN is carried by the sum below).
    var m = bitcast<f32>(p[6]);
    for (var j = lid; j < n; j += WG) {
        let v = load_x(p[3] + base + j * inner);
        m = select(m, v, v > m);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let o = red[lid + s];
            red[lid] = select(red[lid], o, o > red[lid]);
        }
        workgroupBarrier();
    }
    m = red[0];
    workgroupBarrier();
    // Σ e^(x - max), compensated per invocation.
    var sum = 0.0;
    var comp = 0.0;
    for (var j = lid; j < n; j += WG) {
        let e = exp_acc(load_x(p[3] + base + j * inner) - m) - comp;
        let t = sum + e;
        comp = (t - sum) - e;
        sum = t;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    let log_out = p[5] != 0u;
    let lse = log(total);
    let inv = 1.0 / total;
    for (var j = lid; j < n; j += WG) {
        let i = base + j * inner;
        let d = load_x(p[3] + i) - m;
        y_buf[p[4] + i] = select(exp_acc(d) * inv, d - lse, log_out);
    }
}
