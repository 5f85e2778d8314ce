//! Elementwise, pooling, normalisation and softmax kernels (to come).
