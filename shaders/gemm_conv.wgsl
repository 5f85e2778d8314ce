// Implicit-GEMM conv2d addressing (NCHW input, OIHW weights): M = output channels of a group,
// N = batch × output pixels, K = group channels × taps; z = split · groups + group, where a
// split (split-K) covers one chunk of K and writes its own partial slice of C.
// B is gathered from the input on the fly (im2col folded into the tile load).
fn group_of(z: u32) -> u32 {
    return z % p[P_GROUPS];
}

fn split_of(z: u32) -> u32 {
    return z / p[P_GROUPS];
}

fn a_index(m: u32, k: u32, z: u32) -> u32 {
    return p[P_A_OFF] + (group_of(z) * p[P_M] + m) * p[P_K] + k;
}

fn load_b_at(k: u32, n: u32, z: u32) -> f32 {
    let taps = p[P_KH] * p[P_KW];
    let c = k / taps;
    let t = k - c * taps;
    let r = t / p[P_KW];
    let s = t - r * p[P_KW];
    let pixels = p[P_OH] * p[P_OW];
    let b = n / pixels;
    let pix = n - b * pixels;
    let oh = pix / p[P_OW];
    let ow = pix - oh * p[P_OW];
    // Signed arithmetic: padding makes the top-left taps negative.
    let ih = i32(oh * p[P_SH] + r * p[P_DH]) - i32(p[P_PT]);
    let iw = i32(ow * p[P_SW] + s * p[P_DW]) - i32(p[P_PL]);
    if (ih < 0 || iw < 0 || ih >= i32(p[P_X_H]) || iw >= i32(p[P_X_W])) {
        return 0.0;
    }
    let channel = b * p[P_X_C] + group_of(z) * p[P_CG] + c;
    return load_b(p[P_B_OFF] + (channel * p[P_X_H] + u32(ih)) * p[P_X_W] + u32(iw));
}

// Never called: the gathered B has no contiguous rows (VEC_B stays false for conv).
fn b_index(k: u32, n: u32, z: u32) -> u32 {
    return 0u;
}

fn c_index(m: u32, n: u32, z: u32) -> u32 {
    let pixels = p[P_OH] * p[P_OW];
    let b = n / pixels;
    let pix = n - b * pixels;
    return p[P_C_OFF] + split_of(z) * p[P_C_ZS]
        + (b * p[P_OC] + group_of(z) * p[P_M] + m) * pixels + pix;
}

fn k_begin(z: u32) -> u32 {
    return min(split_of(z) * p[P_K_CHUNK], p[P_K]);
}

fn k_end(z: u32) -> u32 {
    return min(k_begin(z) + p[P_K_CHUNK], p[P_K]);
}

fn bias_at(m: u32, n: u32, z: u32) -> f32 {
    if ((p[P_FLAGS] & F_ROW_BIAS) != 0u) {
        return bias_buf[p[P_BIAS_OFF] + group_of(z) * p[P_M] + m];
    }
    return 0.0;
}
