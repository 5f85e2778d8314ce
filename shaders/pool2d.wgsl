// 2-D max / average pooling of NCHW planes (ONNX semantics: asymmetric pads, dilation,
// ceil_mode windows that hang over the edge, count_include_pad), one output per invocation.
// Max propagates NaN; an average over no valid tap is 0/0. Needs a loader `load_x` at binding 1.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(2) var<storage, read_write> y_buf: array<f32>;

// p: 0 outputs, 1 X offset, 2 Y offset, 3 H, 4 W, 5 OH, 6 OW, 7 KH, 8 KW, 9 stride h,
//    10 stride w, 11 dilation h, 12 dilation w, 13 pad top, 14 pad left, 15 pad bottom,
//    16 pad right, 17 count_include_pad, 18 -inf (f32 bits)
override WG: u32 = 256u;
override MODE: u32 = 0u; // 0 max, 1 average

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
    let h = i32(p[3]);
    let w = i32(p[4]);
    let ow_n = p[6];
    let oh_n = p[5];
    let ox = idx % ow_n;
    let t = idx / ow_n;
    let oy = t % oh_n;
    let plane = t / oh_n;
    let x_base = p[1] + plane * p[3] * p[4];
    let y0 = i32(oy * p[9]) - i32(p[13]);
    let x0 = i32(ox * p[10]) - i32(p[14]);
    let dh = i32(p[11]);
    let dw = i32(p[12]);
    var acc = select(bitcast<f32>(p[18]), 0.0, MODE == 1u);
    var valid = 0u;
    var padded = 0u;
    for (var r = 0; r < i32(p[7]); r++) {
        let ih = y0 + r * dh;
        let in_pad_h = ih >= -i32(p[13]) && ih < h + i32(p[15]);
        let in_h = ih >= 0 && ih < h;
        for (var s = 0; s < i32(p[8]); s++) {
            let iw = x0 + s * dw;
            if (in_pad_h && iw >= -i32(p[14]) && iw < w + i32(p[16])) {
                padded += 1u;
            }
            if (in_h && iw >= 0 && iw < w) {
                let v = load_x(x_base + u32(ih) * p[4] + u32(iw));
                if (MODE == 0u) {
                    // NaN tested on the bits: a compiler may fold `v != v` to false.
                    let nan = (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
                    acc = select(acc, v, v > acc || nan);
                } else {
                    acc += v;
                }
                valid += 1u;
            }
        }
    }
    if (MODE == 1u) {
        acc = acc / f32(select(valid, padded, p[17] != 0u));
    }
    y_buf[p[2] + idx] = acc;
}
