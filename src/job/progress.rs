//! The progress bar of a job on standard error (drawn only when it is a terminal).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Template of the bar: elapsed time, bar, cases done, the case running.
const TEMPLATE: &str = "{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}";

/// Progress over a job's cases (a model workload is one case, a benchmark one per shape).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on standard error, hidden when standard error is not a terminal.
    pub fn stderr() -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress::with_target(target)
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Progress {
        Progress::with_target(ProgressDrawTarget::hidden())
    }

    /// A bar on `target`.
    fn with_target(target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    /// Starts counting `cases` cases.
    pub(crate) fn start(&self, cases: u64) {
        self.bar.set_length(cases);
        self.bar.set_position(0);
    }

    /// Shows the case about to run.
    pub(crate) fn case(&self, message: String) {
        self.bar.set_message(message);
    }

    /// Counts one case done.
    pub(crate) fn done(&self) {
        self.bar.inc(1);
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
