//! What `berth deploy` shows while a step prints nothing (a silent `[build]` can run for
//! minutes): on a terminal, a spinner on stderr with the step and its elapsed time, cleared
//! around every log line; otherwise a plain line every [`PLAIN_EVERY`] of silence, so a CI log
//! shows the deploy is alive.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a non-terminal waits in silence before it says the step still runs.
const PLAIN_EVERY: Duration = Duration::from_secs(20);

/// The step a deploy log is in, from its last `-----> ` line.
fn step_of(line: &str) -> Option<String> {
    let text = line.strip_prefix("-----> ")?.trim();
    (!text.is_empty()).then(|| text.chars().take(60).collect())
}

/// The spinner (terminal) or the watchdog thread (plain).
pub(super) enum Progress {
    Spinner(ProgressBar),
    Plain {
        state: Arc<Mutex<(String, Instant, Instant)>>,
        done: Arc<std::sync::atomic::AtomicBool>,
    },
    Off,
}

impl Progress {
    /// For a deploy followed on this stderr; `Off` with `--json`.
    pub(super) fn start(json: bool) -> Progress {
        if json {
            return Progress::Off;
        }
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bar = ProgressBar::new_spinner().with_style(style);
            bar.set_message("waiting for the deploy to start");
            bar.enable_steady_tick(Duration::from_millis(120));
            return Progress::Spinner(bar);
        }
        let now = Instant::now();
        let state = Arc::new(Mutex::new((
            "waiting for the deploy to start".to_string(),
            now,
            now,
        )));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, d) = (state.clone(), done.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if d.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let Ok(mut st) = s.lock() else { return };
            let (step, since_step, last_output) = &mut *st;
            if last_output.elapsed() >= PLAIN_EVERY {
                eprintln!(
                    "       … {step}: still running ({}s)",
                    since_step.elapsed().as_secs()
                );
                *last_output = Instant::now();
            }
        });
        Progress::Plain { state, done }
    }

    /// `line` of the deploy log, printed with `print` (the spinner steps aside for it).
    pub(super) fn line(&self, line: &str, print: impl FnOnce(&str)) {
        match self {
            Progress::Spinner(bar) => {
                bar.suspend(|| print(line));
                if let Some(step) = step_of(line) {
                    bar.set_message(step);
                    bar.reset_elapsed();
                }
            }
            Progress::Plain { state, .. } => {
                print(line);
                if let Ok(mut st) = state.lock() {
                    st.2 = Instant::now();
                    if let Some(step) = step_of(line) {
                        st.0 = step;
                        st.1 = Instant::now();
                    }
                }
            }
            Progress::Off => print(line),
        }
    }

    pub(super) fn finish(&self) {
        match self {
            Progress::Spinner(bar) => bar.finish_and_clear(),
            Progress::Plain { done, .. } => done.store(true, std::sync::atomic::Ordering::Relaxed),
            Progress::Off => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::step_of;

    #[test]
    fn steps_come_from_arrow_lines() {
        assert_eq!(
            step_of("-----> Building: make"),
            Some("Building: make".to_string())
        );
        assert_eq!(step_of("       compiling x"), None);
        assert_eq!(step_of("-----> "), None);
    }
}
