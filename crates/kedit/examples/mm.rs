use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    for &(m, k, n) in &[(154usize, 576usize, 1536usize), (154, 1536, 576), (1024, 576, 1536), (154, 576, 576)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap(); // [out, in]
        let wt = w.t().unwrap().contiguous().unwrap(); // [in, out]
        let reps = 50;
        for (name, rhs) in [("W^T view", w.t().unwrap()), ("contig", wt.clone())] {
            let _ = x.matmul(&rhs).unwrap();
            let t = Instant::now();
            for _ in 0..reps { let _ = x.matmul(&rhs).unwrap(); }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("{m}x{k}x{n} {name}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
        }
    }
}
