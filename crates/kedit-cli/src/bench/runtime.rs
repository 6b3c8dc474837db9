//! `kedit bench`: throughput figures of this machine and model.

use anyhow::Result;
use kedit::bench::runtime as bench;
use serde::Serialize;

use crate::output::{print_json, table};
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = crate::bounds::count(1, 1000))]
    reps: usize,
    #[arg(long)]
    json: bool,
    /// Measure one figure only (for profiling it under `perf`).
    #[arg(long, value_enum)]
    only: Option<Figure>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Figure {
    Matmul,
    Prefill1,
    Prefill16,
    Backward,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    matmul: bench::MatmulFigure,
    /// The same product by numpy, when python3 with numpy is available.
    reference_matmul: Option<bench::ReferenceMatmul>,
    /// The better of the two rates: what the other figures are fractions of.
    best_gflops: f64,
    prefill: Vec<bench::PrefillFigure>,
    forward_backward: bench::BackwardFigure,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    if let Some(only) = args.only {
        match only {
            Figure::Matmul => println!("{:?}", bench::matmul(1536, 4096, 1536, args.reps)?),
            Figure::Prefill1 => println!("{:?}", bench::prefill(&model, 1, 64, args.reps)?),
            Figure::Prefill16 => println!("{:?}", bench::prefill(&model, 16, 64, args.reps)?),
            Figure::Backward => {
                println!(
                    "{:?}",
                    bench::forward_backward(&model, 6, 20, 5, args.reps)?
                )
            }
        }
        return Ok(());
    }
    let matmul = bench::matmul(1536, 4096, 1536, args.reps)?;
    let reference_matmul = bench::numpy_matmul(1536, 4096, 1536, args.reps);
    let best_gflops = reference_matmul
        .as_ref()
        .map_or(matmul.gflops, |r| r.figure.gflops.max(matmul.gflops));
    let prefill = vec![
        bench::prefill(&model, 1, 64, args.reps)?,
        bench::prefill(&model, 16, 64, args.reps)?,
    ];
    let fb = bench::forward_backward(&model, 6, 20, 5, args.reps)?;
    let report = Report {
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        matmul,
        reference_matmul,
        best_gflops,
        prefill,
        forward_backward: fb,
    };
    if args.json {
        return print_json(&report);
    }
    let m = &report.matmul;
    println!("threads: {}", report.threads);
    println!("f32 matmul {}x{} · {}x{}:", m.m, m.k, m.k, m.n);
    println!(
        "  kedit          {:6.1} GFLOP/s ({:.3} s)",
        m.gflops, m.seconds
    );
    match &report.reference_matmul {
        Some(r) => println!(
            "  {:<14} {:6.1} GFLOP/s ({:.3} s)",
            r.library, r.figure.gflops, r.figure.seconds
        ),
        None => println!("  (python3 with numpy not found: nothing to compare with)"),
    }
    println!(
        "  best           {:6.1} GFLOP/s: the fractions below are of it\n",
        report.best_gflops
    );
    let rows: Vec<Vec<String>> = report
        .prefill
        .iter()
        .map(|p| {
            vec![
                format!("{}x{}", p.rows, p.len),
                format!("{:.3}", p.seconds),
                format!("{:.0}", p.tokens_per_second),
                format!("{:.1}", p.gflops),
                format!("{:.0}%", 100.0 * p.gflops / report.best_gflops),
            ]
        })
        .collect();
    println!(
        "{}\n",
        table(
            &["prefill", "seconds", "tokens/s", "GFLOP/s", "of best"],
            &rows
        )
    );
    let f = &report.forward_backward;
    println!(
        "forward+backward, {}x{} tokens, delta at layer {}:\n  from the embeddings      {:.3} s\n  from the layer-{} residual {:.3} s ({:.2}x faster)",
        f.rows,
        f.len,
        f.layer,
        f.from_embeddings_seconds,
        f.layer,
        f.from_cached_residual_seconds,
        f.from_embeddings_seconds / f.from_cached_residual_seconds
    );
    Ok(())
}
