// Operand NAME stored as f16 in a shader with native f16 (SHADER_F16); widened to f32.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<f16>;
fn load_NAME(i: u32) -> f32 {
    return f32(NAME_buf[i]);
}
fn load_NAME4(i: u32) -> vec4<f32> {
    return vec4<f32>(load_NAME(i), load_NAME(i + 1u), load_NAME(i + 2u), load_NAME(i + 3u));
}
