// Operand NAME stored as f16 in a shader with native f16 (SHADER_F16); widened to f32.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<f16>;
fn load_NAME(i: u32) -> f32 {
    return f32(NAME_buf[i]);
}
