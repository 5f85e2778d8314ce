// Operand NAME stored as bf16, two to a 32-bit word (low half first); widened to f32 by a shift.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<u32>;
fn load_NAME(i: u32) -> f32 {
    let w = NAME_buf[i >> 1u];
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}
fn load_NAME4(i: u32) -> vec4<f32> {
    return vec4<f32>(load_NAME(i), load_NAME(i + 1u), load_NAME(i + 2u), load_NAME(i + 3u));
}
