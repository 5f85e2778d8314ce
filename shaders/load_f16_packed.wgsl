// Operand NAME stored as f16, two to a 32-bit word (no SHADER_F16 needed); widened to f32.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<u32>;
fn load_NAME(i: u32) -> f32 {
    return unpack2x16float(NAME_buf[i >> 1u])[i & 1u];
}
fn load_NAME4(i: u32) -> vec4<f32> {
    return vec4<f32>(load_NAME(i), load_NAME(i + 1u), load_NAME(i + 2u), load_NAME(i + 3u));
}
