// Operand NAME stored as f32 words.
@group(0) @binding(BINDING) var<storage, read> NAME_buf: array<f32>;
fn load_NAME(i: u32) -> f32 {
    return NAME_buf[i];
}
