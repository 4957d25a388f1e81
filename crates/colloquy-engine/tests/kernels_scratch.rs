mod kernels_support;
use colloquy_engine::kernels::{self, Backend, GgmlType};
use kernels_support::*;
#[test]
fn show() {
    for ty in GgmlType::DOT_TYPES {
        let n = 512;
        let mut rng = Rng::new(1);
        let w = random_weights(&mut rng, ty, n);
        let xq = activation(ty, &rng.floats(n, 1.0));
        let a = kernels::vec_dot_with(Backend::Scalar, ty, &w, &xq, n).unwrap();
        let b = kernels::vec_dot_with(Backend::Avx2, ty, &w, &xq, n).unwrap();
        eprintln!("{ty}: scalar {a} avx2 {b} avail {}", Backend::Avx2.is_available());
    }
}
