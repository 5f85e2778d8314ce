// Direct depthwise convolution (one input channel per group): one output element per
// invocation; bias and ReLU fused.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(3) var<storage, read> bias_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> y_buf: array<f32>;

// p: 0 total outputs, 1 X offset, 2 W offset, 3 Y offset, 4 bias offset, 5 flags (1 relu,
//    2 bias), 6 C, 7 H, 8 W, 9 O, 10 OH, 11 OW, 12 KH, 13 KW, 14 sh, 15 sw, 16 dh, 17 dw,
//    18 pad top, 19 pad left, 20 output channels per group
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + (wid.y + wid.z * nwg.y) * nwg.x) * WG + lid;
    if (idx >= p[0]) {
        return;
    }
    let ow_n = p[11];
    let oh_n = p[10];
    let o_n = p[9];
    let ow = idx % ow_n;
    let t = idx / ow_n;
    let oh = t % oh_n;
    let t2 = t / oh_n;
    let o = t2 % o_n;
    let b = t2 / o_n;
    let c = o / p[20];
    let h = p[7];
    let w = p[8];
    let kh = p[12];
    let kw = p[13];
    let x_base = p[1] + (b * p[6] + c) * h * w;
    let w_base = p[2] + o * kh * kw;
    var acc = 0.0;
    for (var r = 0u; r < kh; r++) {
        let ih = i32(oh * p[14] + r * p[16]) - i32(p[18]);
        if (ih < 0 || ih >= i32(h)) {
            continue;
        }
        for (var s = 0u; s < kw; s++) {
            let iw = i32(ow * p[15] + s * p[17]) - i32(p[19]);
            if (iw < 0 || iw >= i32(w)) {
                continue;
            }
            acc = fma(load_x(x_base + u32(ih) * w + u32(iw)), load_w(w_base + r * kw + s), acc);
        }
    }
    if ((p[5] & 2u) != 0u) {
        acc += bias_buf[p[4] + o];
    }
    if ((p[5] & 1u) != 0u) {
        acc = select(acc, 0.0, acc < 0.0);
    }
    y_buf[p[3] + idx] = acc;
}
