//! Progress bars for long prompts.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Prompts shorter than this finish too fast for a bar to help.
const MIN_TOKENS: usize = 256;

/// A bar over prompt tokens, drawn to stderr; hidden for short prompts or when
/// stderr is not a terminal.
pub fn prompt_bar(total: usize) -> ProgressBar {
    if total < MIN_TOKENS {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("reading prompt {bar:30} {pos}/{len} tokens ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
