// Operand NAME stored as f32 words.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<f32>;
fn load_NAME(i: u32) -> f32 {
    return NAME_buf[i];
}
fn load_NAME4(i: u32) -> vec4<f32> {
    return vec4<f32>(load_NAME(i), load_NAME(i + 1u), load_NAME(i + 2u), load_NAME(i + 3u));
}
