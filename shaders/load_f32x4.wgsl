// Operand NAME stored as f32, bound as vec4 words: 16-byte loads where the kernel asks for
// four consecutive elements at a multiple of four.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<vec4<f32>>;
fn load_NAME(i: u32) -> f32 {
    return NAME_buf[i >> 2u][i & 3u];
}
fn load_NAME4(i: u32) -> vec4<f32> {
    return NAME_buf[i >> 2u];
}
