// Global average pooling: the mean of each contiguous plane, one workgroup per plane with a
// compensated sum per invocation and a shared-memory tree reduction. Needs a loader `load_x`
// at binding 1.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(2) var<storage, read_write> y_buf: array<f32>;

// p: 0 planes, 1 plane size, 2 X offset, 3 Y offset
override WG: u32 = 128u; // a power of two

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let plane = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (plane >= p[0]) {
        return;
    }
    let size = p[1];
    let base = p[2] + plane * size;
    var sum = 0.0;
    var comp = 0.0;
    for (var j = lid; j < size; j += WG) {
        let e = load_x(base + j) - comp;
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
    if (lid == 0u) {
        y_buf[p[3] + plane] = red[0] / f32(size);
    }
}
