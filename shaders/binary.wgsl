// Elementwise y = a ∘ b with numpy broadcasting, one output element per invocation. The
// broadcast arrives merged into at most 6 dimensions with per-operand element strides (0 where
// an operand is broadcast). Needs loaders `load_a` (binding 1) and `load_b` (binding 2).
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(3) var<storage, read_write> y_buf: array<f32>;

// p: 0 elements, 1 A offset, 2 B offset, 3 Y offset, 4 rank (1..=6), 5..11 dims (outermost
//    first), 11..17 A strides, 17..23 B strides
override WG: u32 = 256u;
override OP: u32 = 0u; // 0 add, 1 sub, 2 mul, 3 div

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
    let rank = p[4];
    var rem = idx;
    var ia = 0u;
    var ib = 0u;
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let size = p[5u + d];
        let i = rem % size;
        rem = rem / size;
        ia += i * p[11u + d];
        ib += i * p[17u + d];
    }
    let a = load_a(p[1] + ia);
    let b = load_b(p[2] + ib);
    var v: f32;
    if (OP == 0u) {
        v = a + b;
    } else if (OP == 1u) {
        v = a - b;
    } else if (OP == 2u) {
        v = a * b;
    } else {
        v = a / b;
    }
    y_buf[p[3] + idx] = v;
}
