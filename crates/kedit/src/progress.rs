//! Progress of long work, reported one way. The library says what it is doing through a
//! [`Progress`]; the command line draws bars from it, tests and library users pass
//! [`Silent`]. Nothing in the library prints progress by itself.

/// Receives progress reports.
pub trait Progress {
    /// A phase of `total` steps starts, `done` of them already finished (a resumed run).
    fn phase(&mut self, _name: &str, _total: usize, _done: usize) {}
    /// `steps` more steps of the current phase are done.
    fn advance(&mut self, _steps: usize) {}
    /// A short status shown beside the current phase (running means, seconds per step).
    fn status(&mut self, _text: &str) {}
    /// A line worth keeping in a log (a loss per epoch, a v* step): shown when verbose.
    fn log(&mut self, _line: &str) {}
    /// A message the user should see whether verbose or not (a skipped record, a
    /// hyper-parameter warning, a resumed run).
    fn notice(&mut self, _line: &str) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {}

impl Progress for () {}
