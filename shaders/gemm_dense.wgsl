// Dense matmul addressing: strided A and B, row-major C; z is the split-K slice.
fn a_index(m: u32, k: u32, z: u32) -> u32 {
    return p[P_A_OFF] + m * p[P_A_RS] + k * p[P_A_CS];
}

fn load_b_at(k: u32, n: u32, z: u32) -> f32 {
    return load_b(p[P_B_OFF] + k * p[P_B_RS] + n * p[P_B_CS]);
}

fn b_index(k: u32, n: u32, z: u32) -> u32 {
    return p[P_B_OFF] + k * p[P_B_RS] + n * p[P_B_CS];
}

fn c_index(m: u32, n: u32, z: u32) -> u32 {
    return p[P_C_OFF] + z * p[P_C_ZS] + m * p[P_C_RS] + n;
}

fn k_begin(z: u32) -> u32 {
    return min(z * p[P_K_CHUNK], p[P_K]);
}

fn k_end(z: u32) -> u32 {
    return min(k_begin(z) + p[P_K_CHUNK], p[P_K]);
}

fn bias_at(m: u32, n: u32, z: u32) -> f32 {
    let flags = p[P_FLAGS];
    if ((flags & F_ROW_BIAS) != 0u) {
        return bias_buf[p[P_BIAS_OFF] + m];
    }
    if ((flags & F_COL_BIAS) != 0u) {
        return bias_buf[p[P_BIAS_OFF] + n];
    }
    return 0.0;
}
