// Tiled GEMM body: a BM×BN tile of C per workgroup, staged through BK-deep tiles of A and B in
// workgroup memory, a TM×TN register tile per invocation (rows and columns strided by the
// thread grid so neighbouring invocations read neighbouring words). Bounds are handled on
// every edge. The addressing functions come from the variant (dense or conv) prepended to it.
override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = 256u;       // (BM / TM) * (BN / TN)
override A_TILE: u32 = 1024u;  // BK * BM
override B_TILE: u32 = 1024u;  // BK * BN
// Vector tile loads: A rows (k fast) / B rows (n fast) read four elements at a time. The host
// sets them only when the operand's rows and offset are multiples of four.
override VEC_A: bool = false;
override VEC_B: bool = false;

var<workgroup> a_tile: array<f32, A_TILE>;  // [BK][BM]
var<workgroup> b_tile: array<f32, B_TILE>;  // [BK][BN]

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (group >= p[P_TOTAL]) {
        return;
    }
    let tiles_n = p[P_TILES_N];
    let tiles_m = p[P_TILES_M];
    let tn = group % tiles_n;
    let rest = group / tiles_n;
    let tm = rest % tiles_m;
    let z = rest / tiles_m;
    let m0 = tm * BM;
    let n0 = tn * BN;
    let rows = p[P_M];
    let cols = p[P_N];
    let flags = p[P_FLAGS];
    let a_k_fast = (flags & F_A_K_FAST) != 0u;
    let b_n_fast = (flags & F_B_N_FAST) != 0u;

    let threads_n = BN / TN;
    let threads_m = BM / TM;
    let tx = lid % threads_n;
    let ty = lid / threads_n;

    // The TM×TN accumulators as named scalars (written out by the host for the tiling, so
    // they stay in registers: an array indexed in a loop can land in local memory).
    //@ACCUMULATORS

    let kb = k_begin(z);
    let ke = k_end(z);
    for (var k0 = kb; k0 < ke; k0 += BK) {
        if (VEC_A) {
            let quads = BK / 4u;
            for (var i = lid; i < BM * quads; i += WG) {
                let kk = (i % quads) * 4u;
                let mm = i / quads;
                let m = m0 + mm;
                let k = k0 + kk;
                var v = vec4<f32>(0.0);
                if (m < rows) {
                    if (k + 3u < ke) {
                        v = load_a4(a_index(m, k, z));
                    } else {
                        for (var e = 0u; e < 4u; e++) {
                            if (k + e < ke) {
                                v[e] = load_a(a_index(m, k + e, z));
                            }
                        }
                    }
                }
                a_tile[kk * BM + mm] = v.x;
                a_tile[(kk + 1u) * BM + mm] = v.y;
                a_tile[(kk + 2u) * BM + mm] = v.z;
                a_tile[(kk + 3u) * BM + mm] = v.w;
            }
        } else {
            for (var i = lid; i < BM * BK; i += WG) {
                var mm: u32;
                var kk: u32;
                if (a_k_fast) {
                    kk = i % BK;
                    mm = i / BK;
                } else {
                    mm = i % BM;
                    kk = i / BM;
                }
                let m = m0 + mm;
                let k = k0 + kk;
                var v = 0.0;
                if (m < rows && k < ke) {
                    v = load_a(a_index(m, k, z));
                }
                a_tile[kk * BM + mm] = v;
            }
        }
        if (VEC_B) {
            let quads = BN / 4u;
            for (var i = lid; i < quads * BK; i += WG) {
                let nn = (i % quads) * 4u;
                let kk = i / quads;
                let n = n0 + nn;
                let k = k0 + kk;
                var v = vec4<f32>(0.0);
                if (k < ke) {
                    if (n + 3u < cols) {
                        v = load_b4(b_index(k, n, z));
                    } else {
                        for (var e = 0u; e < 4u; e++) {
                            if (n + e < cols) {
                                v[e] = load_b_at(k, n + e, z);
                            }
                        }
                    }
                }
                let base = kk * BN + nn;
                b_tile[base] = v.x;
                b_tile[base + 1u] = v.y;
                b_tile[base + 2u] = v.z;
                b_tile[base + 3u] = v.w;
            }
        } else {
            for (var i = lid; i < BN * BK; i += WG) {
                var nn: u32;
                var kk: u32;
                if (b_n_fast) {
                    nn = i % BN;
                    kk = i / BN;
                } else {
                    kk = i % BK;
                    nn = i / BK;
                }
                let n = n0 + nn;
                let k = k0 + kk;
                var v = 0.0;
                if (n < cols && k < ke) {
                    v = load_b_at(k, n, z);
                }
                b_tile[kk * BN + nn] = v;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a_row = kk * BM + ty;
            let b_row = kk * BN + tx;
            //@FMA_TILE
        }
        workgroupBarrier();
    }

    let alpha = bitcast<f32>(p[P_ALPHA]);
    let beta = bitcast<f32>(p[P_BETA]);
    let row0 = m0 + ty;
    let col0 = n0 + tx;
    //@STORE_TILE
}

// Writes one output: alpha·acc (+ beta·C) (+ bias) (ReLU), where it lies inside C.
fn store_c(m: u32, n: u32, z: u32, acc: f32, alpha: f32, beta: f32, flags: u32) {
    if (m >= p[P_M] || n >= p[P_N]) {
        return;
    }
    let ci = c_index(m, n, z);
    var v = alpha * acc;
    if ((flags & F_READ_C) != 0u) {
        v += beta * c_buf[ci];
    }
    v += bias_at(m, n, z);
    if ((flags & F_RELU) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    c_buf[ci] = v;
}
