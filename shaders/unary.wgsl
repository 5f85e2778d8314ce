// Elementwise activation y = f(x), one element per invocation; f is chosen by the OP override
// (the numbering of `unary_code` in kernels/ops.rs). Needs activation_math.wgsl and a loader
// `load_x` at binding 1.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(2) var<storage, read_write> y_buf: array<f32>;

// p: 0 elements, 1 X offset, 2 Y offset, 3 first parameter (f32 bits), 4 second parameter
override WG: u32 = 256u;
override OP: u32 = 0u;

fn activation(x: f32, a: f32, b: f32) -> f32 {
    if (OP == 0u) { // relu; NaN propagates
        return select(select(x, 0.0, x < 0.0), x, is_nan_bits(x));
    }
    if (OP == 1u) { // clip to [a, b]
        return clamp_nan(x, a, b);
    }
    if (OP == 2u) { // leaky relu, slope a
        return select(a * x, x, x >= 0.0);
    }
    if (OP == 3u) { // elu, scale a
        return select(a * expm1_acc(x), x, x >= 0.0);
    }
    if (OP == 4u) {
        return sigmoid_acc(x);
    }
    if (OP == 5u) {
        return tanh_acc(x);
    }
    if (OP == 6u) {
        return gelu_acc(x);
    }
    if (OP == 7u) {
        return gelu_tanh_acc(x);
    }
    if (OP == 8u) {
        return silu_acc(x);
    }
    if (OP == 9u) { // hard sigmoid clip(a·x + b, 0, 1)
        return clamp_nan(fma(a, x, b), 0.0, 1.0);
    }
    if (OP == 10u) { // hard swish x·clip(x/6 + 1/2, 0, 1); exactly 0 from -3 down
        let y = x * clamp_nan((x + 3.0) * (1.0 / 6.0), 0.0, 1.0);
        return select(y, 0.0, x <= -3.0);
    }
    if (OP == 11u) {
        return exp_acc(x);
    }
    if (OP == 12u) {
        return expm1_acc(x);
    }
    if (OP == 13u) {
        return erf_acc(x);
    }
    return erfc_acc(x);
}

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
    let v = activation(load_x(p[1] + idx), bitcast<f32>(p[3]), bitcast<f32>(p[4]));
    y_buf[p[2] + idx] = v;
}
