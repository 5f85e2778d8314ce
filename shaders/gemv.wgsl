// Products of a few rows (matrix-vector and its neighbours: a classifier at a small batch).
// A workgroup owns COLS columns of C for all of its rows; each column's depth is spread over
// LANES = WG / COLS invocations and their partial sums are added in workgroup memory. B, the
// large operand, is read once and in its stored order: when its columns are contiguous (n fast)
// neighbouring invocations take neighbouring columns, when its rows are (k fast: a transposed
// weight) they take neighbouring depths of one column. z is the K split (partials when > 1).
// The host writes out one accumulator per row of A (`//@...` markers), so they stay in registers.
override COLS: u32 = 8u;
override WG: u32 = 256u;
override SUMS: u32 = 256u;   // WG × rows
// A and B both k fast with offsets and strides in whole vec4 words: depth read four at a time.
override VEC: bool = false;

var<workgroup> sums: array<f32, SUMS>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    // Uniform across the workgroup, so the barrier below is reached by all or none.
    if (group >= p[P_TOTAL]) {
        return;
    }
    let tiles_n = p[P_TILES_N];
    let tn = group % tiles_n;
    let z = group / tiles_n;
    let flags = p[P_FLAGS];
    let b_n_fast = (flags & F_B_N_FAST) != 0u;
    let lanes = WG / COLS;
    var c: u32;
    var s: u32;
    if (b_n_fast) {
        c = lid % COLS;
        s = lid / COLS;
    } else {
        c = lid / lanes;
        s = lid % lanes;
    }
    let n = tn * COLS + c;
    let kb = k_begin(z);
    let ke = k_end(z);
    //@ACCUMULATORS
    if (n < p[P_N]) {
        if (VEC) {
            for (var k = kb + s * 4u; k < ke; k += lanes * 4u) {
                if (k + 3u < ke) {
                    let b = load_b4(b_index(k, n, z));
                    //@VEC_STEP
                } else {
                    for (var e = 0u; e < 4u; e++) {
                        if (k + e < ke) {
                            let b = load_b_at(k + e, n, z);
                            let kk = k + e;
                            //@SCALAR_STEP
                        }
                    }
                }
            }
        } else {
            for (var kk = kb + s; kk < ke; kk += lanes) {
                let b = load_b_at(kk, n, z);
                //@SCALAR_STEP
            }
        }
    }
    //@SAVE
    workgroupBarrier();
    let rows = p[P_M];
    for (var i = lid; i < COLS * rows; i += WG) {
        let r = i / COLS;
        let cc = i % COLS;
        let col = tn * COLS + cc;
        var total = 0.0;
        for (var t = 0u; t < lanes; t++) {
            var at: u32;
            if (b_n_fast) {
                at = t * COLS + cc;
            } else {
                at = cc * lanes + t;
            }
            total += sums[r * WG + at];
        }
        if (col < p[P_N]) {
            let ci = c_index(r, col, z);
            var v = bitcast<f32>(p[P_ALPHA]) * total;
            if ((flags & F_READ_C) != 0u) {
                v += bitcast<f32>(p[P_BETA]) * c_buf[ci];
            }
            v += bias_at(r, col, z);
            if ((flags & F_RELU) != 0u) {
                v = select(v, 0.0, v < 0.0);
            }
            c_buf[ci] = v;
        }
    }
}
