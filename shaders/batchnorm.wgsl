// Batch normalisation in inference form, y = (x - mean[c]) · scale[c] / sqrt(var[c] + eps)
// + bias[c] (then max(y, 0) with RELU, NaN kept), one element per invocation over contiguous planes of [N, C, plane]. Needs loaders
// `load_x` (1), `load_scale` (2), `load_bias` (3), `load_mean` (4), `load_var` (5).
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(6) var<storage, read_write> y_buf: array<f32>;

// p: 0 elements, 1 X offset, 2 Y offset, 3 C, 4 plane size, 5 channel of the first plane,
//    6 epsilon (f32 bits), 7 scale offset, 8 bias offset, 9 mean offset, 10 var offset
override WG: u32 = 256u;
override RELU: bool = false;

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
    let c = (p[5] + idx / p[4]) % p[3];
    let k = load_scale(p[7] + c) / sqrt(load_var(p[10] + c) + bitcast<f32>(p[6]));
    let v = (load_x(p[1] + idx) - load_mean(p[9] + c)) * k + load_bias(p[8] + c);
    y_buf[p[2] + idx] = select(v, 0.0, RELU && v < 0.0);
}
