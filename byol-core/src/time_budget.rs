//! The progress of a run bounded by `--time-limit`: its learning-rate and τ schedules follow the
//! share of the budget spent training, not a count of steps, so they end (learning rate 0, τ 1)
//! exactly when the budget does, whatever the machine's speed does meanwhile. No step rate is
//! measured or predicted: a run that slows down simply takes fewer steps per share of the budget.
//!
//! Progress is `trained / (budget − off)`: `trained` the seconds spent in steps, `off` the seconds
//! of the budget spent elsewhere (start-up, the kNN monitor, checkpoints). Both move together, so
//! progress rises monotonically and reaches 1 when the wall clock reaches the budget.
//!
//! Until 2026-12-03 (session 14) a budget fixed a number of steps instead, from a step rate
//! measured over the first steps, shortened by refits when the rate fell; on this noisy VM the
//! refits left up to 21 % of a 30-minute budget unused and each moved the learning rate
//! (README, "The Fashion-MNIST recipe").

use std::time::{Duration, Instant};

/// Checkpoint metadata of a time-indexed run: seconds trained so far (all processes).
pub const TRAINED_SECONDS_KEY: &str = "byol.trained_seconds";
/// Checkpoint metadata of a time-indexed run: the training seconds its schedules span.
pub const PLANNED_SECONDS_KEY: &str = "byol.planned_seconds";

/// Progress through a budget: `trained` seconds of steps, after `spent` seconds of the wall-clock
/// `budget` (`spent ≥ trained`; the rest was spent off the steps). In [0, 1]; 1 once spent.
pub fn budget_progress(trained: f64, spent: f64, budget: f64) -> f64 {
    let available = budget - (spent - trained).max(0.0);
    if available.is_nan() || available <= 0.0 || trained >= available {
        return 1.0;
    }
    (trained / available).clamp(0.0, 1.0)
}

/// The clock of a time-indexed run: the seconds it has trained and the seconds it may train.
#[derive(Debug, Clone, Copy)]
pub struct BudgetClock {
    /// Seconds trained by the processes before this one (a resumed run).
    trained_before: f64,
    /// When this process started stepping.
    stepping_since: Instant,
    /// Time this process spent off its steps since `stepping_since`.
    paused: Duration,
    plan: Plan,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    /// A fresh run: the budget counts from `started` (before start-up), and whatever is spent
    /// off the steps is taken from it.
    Budget { started: Instant, budget: Duration },
    /// A resumed run: the training seconds its first process planned when it last saved. The
    /// interruption broke that process's budget; the schedules keep their length in seconds.
    Fixed(f64),
}

impl BudgetClock {
    /// A fresh run with `budget` counted from `started`, stepping from `stepping_since`.
    pub fn fresh(started: Instant, stepping_since: Instant, budget: Duration) -> Self {
        Self {
            trained_before: 0.0,
            stepping_since,
            paused: Duration::ZERO,
            plan: Plan::Budget { started, budget },
        }
    }

    /// A resumed run that had trained `trained` of `planned` seconds, stepping from now.
    pub fn resumed(trained: f64, planned: f64) -> Self {
        Self {
            trained_before: trained,
            stepping_since: Instant::now(),
            paused: Duration::ZERO,
            plan: Plan::Fixed(planned),
        }
    }

    /// Time spent off the steps (monitor, checkpoint): not training.
    pub fn pause(&mut self, off_steps: Duration) {
        self.paused += off_steps;
    }

    /// Seconds trained so far, all processes.
    pub fn trained_seconds(&self) -> f64 {
        let stepping = self.stepping_since.elapsed().saturating_sub(self.paused);
        self.trained_before + stepping.as_secs_f64()
    }

    /// The training seconds the schedules span, as the budget stands now.
    pub fn planned_seconds(&self) -> f64 {
        self.trained_and_planned().1
    }

    /// Progress through the schedules, in [0, 1].
    pub fn progress(&self) -> f64 {
        let (trained, planned) = self.trained_and_planned();
        budget_progress(trained, trained, planned)
    }

    /// Seconds trained and seconds the schedules span, from one reading of the clocks.
    fn trained_and_planned(&self) -> (f64, f64) {
        let trained = self.trained_seconds();
        let planned = match self.plan {
            Plan::Budget { started, budget } => {
                let off = (started.elapsed().as_secs_f64() - trained).max(0.0);
                (budget.as_secs_f64() - off).max(0.0)
            }
            Plan::Fixed(planned) => planned,
        };
        (trained, planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_leaves_out_the_time_spent_off_the_steps() {
        // 100 s of a 300 s budget spent, 80 of them training: 80 of the 280 s left to train.
        assert!((budget_progress(80.0, 100.0, 300.0) - 80.0 / 280.0).abs() < 1e-12);
        // Without time off the steps, the share of the budget.
        assert!((budget_progress(150.0, 150.0, 300.0) - 0.5).abs() < 1e-12);
        // The budget spent: 1, however much of it went to the monitor.
        assert_eq!(budget_progress(200.0, 300.0, 300.0), 1.0);
        assert_eq!(budget_progress(10.0, 400.0, 300.0), 1.0);
        assert_eq!(budget_progress(0.0, 0.0, 0.0), 1.0);
        assert_eq!(budget_progress(0.0, 0.0, 300.0), 0.0);
    }

    #[test]
    fn progress_never_goes_back_when_time_is_spent_off_the_steps() {
        // A minute of monitoring at 40 % of the budget: progress holds, then goes on rising.
        let before = budget_progress(120.0, 120.0, 300.0);
        let monitored = budget_progress(120.0, 180.0, 300.0);
        let after = budget_progress(150.0, 210.0, 300.0);
        assert!(
            before <= monitored && monitored < after,
            "{before} {monitored} {after}"
        );
    }

    #[test]
    fn a_clock_counts_pauses_and_start_up_off_the_training_seconds() {
        let now = Instant::now();
        // Started 12 s ago, stepping for 10 s, 4 of them paused: 6 s trained, 6 s off.
        let mut clock = BudgetClock::fresh(
            now - Duration::from_secs(12),
            now - Duration::from_secs(10),
            Duration::from_secs(60),
        );
        clock.pause(Duration::from_secs(4));
        assert!((clock.trained_seconds() - 6.0).abs() < 0.1);
        assert!((clock.planned_seconds() - 54.0).abs() < 0.1);
        assert!((clock.progress() - 6.0 / 54.0).abs() < 0.01);
        // A resumed run keeps the planned seconds it saved.
        let resumed = BudgetClock::resumed(30.0, 54.0);
        assert!((resumed.planned_seconds() - 54.0).abs() < 1e-12);
        assert!((resumed.progress() - 30.0 / 54.0).abs() < 0.01);
        assert_eq!(BudgetClock::resumed(60.0, 54.0).progress(), 1.0);
    }
}
