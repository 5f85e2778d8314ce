// Parameters shared by every tiled GEMM variant (dense matmul and implicit-GEMM conv2d).
// `p` is a small read-only storage array of u32; floats travel as their bit patterns.
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(3) var<storage, read_write> c_buf: array<f32>;
@group(0) @binding(4) var<storage, read> bias_buf: array<f32>;

const P_M: u32 = 0u;          // rows of C (per group)
const P_N: u32 = 1u;          // columns of C
const P_K: u32 = 2u;          // reduced dimension
const P_A_OFF: u32 = 3u;      // element offset of A in its binding
const P_A_RS: u32 = 4u;       // A stride between rows (m)
const P_A_CS: u32 = 5u;       // A stride between columns (k)
const P_B_OFF: u32 = 6u;
const P_B_RS: u32 = 7u;       // B stride between rows (k)
const P_B_CS: u32 = 8u;       // B stride between columns (n)
const P_C_OFF: u32 = 9u;
const P_C_RS: u32 = 10u;      // C stride between rows
const P_TILES_N: u32 = 11u;
const P_TILES_M: u32 = 12u;
const P_TOTAL: u32 = 13u;     // workgroups that do work (the grid may be folded and padded)
const P_ALPHA: u32 = 14u;
const P_BETA: u32 = 15u;
const P_FLAGS: u32 = 16u;     // bit 0 relu, 1 row bias, 2 column bias, 3 read C (beta), 4 A k-fast, 5 B n-fast
const P_BIAS_OFF: u32 = 17u;
const P_K_CHUNK: u32 = 18u;   // split-K: depth of one split
const P_C_ZS: u32 = 19u;      // C stride between z slices (split-K partials)
const P_X_C: u32 = 20u;       // conv: input channels
const P_X_H: u32 = 21u;
const P_X_W: u32 = 22u;
const P_OH: u32 = 23u;
const P_OW: u32 = 24u;
const P_KH: u32 = 25u;
const P_KW: u32 = 26u;
const P_SH: u32 = 27u;
const P_SW: u32 = 28u;
const P_DH: u32 = 29u;
const P_DW: u32 = 30u;
const P_PT: u32 = 31u;
const P_PL: u32 = 32u;
const P_CG: u32 = 33u;        // input channels per group
const P_OC: u32 = 34u;        // output channels in all
const P_GROUPS: u32 = 35u;    // conv: channel groups (z = split · groups + group)

const F_RELU: u32 = 1u;
const F_ROW_BIAS: u32 = 2u;
const F_COL_BIAS: u32 = 4u;
const F_READ_C: u32 = 8u;
const F_A_K_FAST: u32 = 16u;
const F_B_N_FAST: u32 = 32u;
