//! The fuzzing harness in the suite: 1,000 cases of every format, none of which may panic
//! (`kedit fuzz` runs 100,000 per format on demand, with its memory bound).

use crate::common;

use kedit::fuzz::{self, Format, Options};
use kedit::progress::Silent;

#[test]
fn a_thousand_cases_of_every_format_end_in_a_result_or_a_typed_error() {
    let scratch = common::Scratch::new("fuzz");
    let opts = Options {
        seed: 20261201,
        cases: 1000,
        first_case: 0,
        scratch: scratch.path().to_path_buf(),
        shared: Some(common::shared()),
        model_dirs: vec![common::gemma3_tiny_dir()],
        keep: false,
    };
    let mut failures = Vec::new();
    for format in Format::ALL {
        let report = fuzz::run(format, &opts, &mut Silent, &mut |_| {}).unwrap();
        println!(
            "{format}: {} cases, {} ok, {} typed errors, {} panics, {:.1} s",
            report.cases,
            report.ok,
            report.errors,
            report.panics.len(),
            report.seconds
        );
        assert!(report.skipped.is_none(), "{format}: {:?}", report.skipped);
        assert_eq!(report.cases, 1000);
        // Both outcomes occur: the mutators neither break everything nor nothing.
        assert!(report.ok > 0 && report.errors > 0, "{format}: {report:?}");
        for f in &report.panics {
            failures.push(format!(
                "{format} case {} (seed {}): {}",
                f.case, opts.seed, f.message
            ));
        }
    }
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}
