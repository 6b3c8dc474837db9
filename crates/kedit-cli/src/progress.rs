//! Progress bars drawn from the library's progress reports.

use indicatif::{ProgressBar, ProgressStyle};
use kedit::progress::Progress;

/// One bar per phase; `log` lines are printed above it when verbose.
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
    pub verbose: bool,
}

impl Bars {
    pub fn verbose(verbose: bool) -> Self {
        Bars { bar: None, verbose }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Progress for Bars {
    fn phase(&mut self, name: &str, total: usize, done: usize) {
        self.finish();
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn advance(&mut self, steps: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(steps as u64);
        }
    }

    fn status(&mut self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    fn log(&mut self, line: &str) {
        if self.verbose {
            self.notice(line);
        }
    }

    fn notice(&mut self, line: &str) {
        // A bar drawn to a terminal keeps its line below the notice; a hidden one (output
        // piped to a log) would swallow it.
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Bars, or nothing when the output is for machines (`--json`).
pub fn bars_unless(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(kedit::progress::Silent)
    } else {
        Box::new(Bars::default())
    }
}
