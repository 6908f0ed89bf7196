//! No black hole: the dataplane threads (workers, the sync thread) are
//! watched from the control thread. One that died (its thread ended) or
//! stopped making progress (its loop counter did not move for
//! [`PROGRESS_TIMEOUT`]) makes the member unfit: the control thread takes
//! its quality to 0, so the peer takes over, and logs why.
//!
//! Sans-IO: [`Watchdog::check`] takes the time and what each thread shows
//! (a counter it bumps every turn of its loop, whether it ended) and says
//! what changed.

use std::time::{Duration, Instant};

/// A thread whose loop counter does not move for this long is stuck (the
/// daemon takes four of an adaptive worker's longest sleeps instead when
/// that is longer). A live worker turns at least every `max_sleep_us`
/// (500 us by default); the sync thread at least every millisecond.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_millis(100);

/// What a watched thread shows at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// A counter the thread bumps every turn of its loop.
    pub progress: u64,
    /// Its thread has ended (before the node stops: it panicked).
    pub finished: bool,
}

/// What a watched thread is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It makes progress.
    Running,
    /// Its loop counter has not moved for [`PROGRESS_TIMEOUT`].
    Stalled,
    /// Its thread ended: it does not come back.
    Dead,
}

/// A change the control thread logs (and acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `name` stopped making progress: nothing moved for `ms`.
    Stalled {
        /// "worker 1", "the sync thread".
        name: String,
        /// How long its counter has not moved.
        ms: u64,
    },
    /// `name`'s thread ended.
    Died {
        /// "worker 1", "the sync thread".
        name: String,
    },
    /// `name` makes progress again.
    Recovered {
        /// "worker 1", "the sync thread".
        name: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Stalled { name, ms } => write!(
                f,
                "{name} stopped making progress (its loop has not turned for {ms} ms): quality 0, the peer takes over"
            ),
            Change::Died { name } => write!(
                f,
                "{name} died (its thread ended, a panic: see stderr): quality 0, the peer takes over; restart tandemd"
            ),
            Change::Recovered { name } => {
                write!(f, "{name} makes progress again: quality restored")
            }
        }
    }
}

#[derive(Debug)]
struct Watched {
    name: String,
    last: u64,
    moved_at: Instant,
    health: Health,
}

/// The watch over the dataplane threads.
#[derive(Debug)]
pub struct Watchdog {
    timeout: Duration,
    threads: Vec<Watched>,
    last_check: Option<Instant>,
}

impl Watchdog {
    /// Watches the threads named `names` (in the order of the samples
    /// given to [`check`](Self::check)), declared stuck after `timeout`.
    pub fn new(names: Vec<String>, timeout: Duration, now: Instant) -> Watchdog {
        Watchdog {
            timeout,
            threads: names
                .into_iter()
                .map(|name| Watched {
                    name,
                    last: 0,
                    moved_at: now,
                    health: Health::Running,
                })
                .collect(),
            last_check: None,
        }
    }

    /// Takes one sample per thread (same order as the names) at `now`;
    /// returns what changed. When this check itself comes late (more than
    /// half the timeout after the previous one: the control thread was not
    /// scheduled, so nobody else may have been), nobody is judged and
    /// every thread gets a fresh timeout.
    pub fn check(&mut self, now: Instant, samples: &[Sample]) -> Vec<Change> {
        let late = self
            .last_check
            .is_some_and(|t| now.saturating_duration_since(t) > self.timeout / 2);
        self.last_check = Some(now);
        let mut changes = Vec::new();
        for (w, s) in self.threads.iter_mut().zip(samples) {
            if w.health == Health::Dead {
                continue;
            }
            if s.finished {
                w.health = Health::Dead;
                changes.push(Change::Died {
                    name: w.name.clone(),
                });
                continue;
            }
            let moved = s.progress != w.last;
            if moved {
                w.last = s.progress;
                w.moved_at = now;
            } else if late && w.health == Health::Running {
                w.moved_at = now;
            }
            let still = now.saturating_duration_since(w.moved_at);
            match w.health {
                Health::Running if still >= self.timeout => {
                    w.health = Health::Stalled;
                    changes.push(Change::Stalled {
                        name: w.name.clone(),
                        ms: still.as_millis() as u64,
                    });
                }
                // Only a counter that moves again brings it back.
                Health::Stalled if moved => {
                    w.health = Health::Running;
                    changes.push(Change::Recovered {
                        name: w.name.clone(),
                    });
                }
                _ => {}
            }
        }
        changes
    }

    /// Every watched thread makes progress.
    pub fn healthy(&self) -> bool {
        self.threads.iter().all(|w| w.health == Health::Running)
    }

    /// The threads that are not running, as hainfo lists them.
    pub fn problems(&self) -> Vec<String> {
        self.threads
            .iter()
            .filter_map(|w| match w.health {
                Health::Running => None,
                Health::Stalled => Some(format!("{} stopped making progress", w.name)),
                Health::Dead => Some(format!("{} died", w.name)),
            })
            .collect()
    }

    /// The health of thread `i` (in the order of the names).
    pub fn health(&self, i: usize) -> Option<Health> {
        self.threads.get(i).map(|w| w.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = PROGRESS_TIMEOUT;

    fn live(p: u64) -> Sample {
        Sample {
            progress: p,
            finished: false,
        }
    }

    fn dog(now: Instant) -> Watchdog {
        Watchdog::new(vec!["worker 0".into(), "the sync thread".into()], T, now)
    }

    /// Checks every 10 ms from `t` for `span`, worker 0 at `w0` (constant
    /// or moving), the sync thread moving; returns every change.
    fn run(
        d: &mut Watchdog,
        t: &mut Instant,
        span: Duration,
        w0: impl Fn(u64) -> u64,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let mut i = 0u64;
        let end = *t + span;
        while *t < end {
            *t += Duration::from_millis(10);
            i += 1;
            out.extend(d.check(*t, &[live(w0(i)), live(1000 + i)]));
        }
        out
    }

    #[test]
    fn threads_that_keep_turning_stay_healthy() {
        let mut t = Instant::now();
        let mut d = dog(t);
        assert!(run(&mut d, &mut t, Duration::from_secs(2), |i| i).is_empty());
        assert!(d.healthy());
        assert!(d.problems().is_empty());
    }

    #[test]
    fn a_counter_that_stops_for_the_timeout_is_a_stall_and_moving_again_recovers() {
        let mut t = Instant::now();
        let mut d = dog(t);
        run(&mut d, &mut t, Duration::from_millis(200), |i| i);
        // Frozen at 7: not yet stuck before the timeout.
        let early = run(&mut d, &mut t, T - Duration::from_millis(20), |_| 7);
        assert!(early.is_empty(), "{early:?}");
        assert!(d.healthy());
        let changes = run(&mut d, &mut t, Duration::from_millis(50), |_| 7);
        assert_eq!(changes.len(), 1, "{changes:?}");
        match &changes[0] {
            Change::Stalled { name, ms } => {
                assert_eq!(name, "worker 0");
                assert!(*ms >= T.as_millis() as u64, "{ms}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!d.healthy());
        assert_eq!(d.health(0), Some(Health::Stalled));
        assert_eq!(d.health(1), Some(Health::Running));
        assert_eq!(d.problems(), ["worker 0 stopped making progress"]);
        assert!(changes[0]
            .to_string()
            .starts_with("worker 0 stopped making progress (its loop has not turned for "));
        // Moving again.
        let back = run(&mut d, &mut t, Duration::from_millis(30), |i| 100 + i);
        assert_eq!(
            back,
            [Change::Recovered {
                name: "worker 0".into()
            }]
        );
        assert!(d.healthy());
    }

    #[test]
    fn a_thread_that_ended_is_dead_for_good() {
        let mut t = Instant::now();
        let mut d = dog(t);
        run(&mut d, &mut t, Duration::from_millis(50), |i| i);
        t += Duration::from_millis(10);
        let gone = Sample {
            progress: 3,
            finished: true,
        };
        assert_eq!(
            d.check(t, &[gone, live(5000)]),
            [Change::Died {
                name: "worker 0".into()
            }]
        );
        assert_eq!(d.problems(), ["worker 0 died"]);
        // Reported once; a dead thread never recovers.
        t += Duration::from_millis(10);
        assert!(d.check(t, &[gone, live(5001)]).is_empty());
        t += Duration::from_millis(10);
        assert!(d.check(t, &[live(9), live(5002)]).is_empty());
        assert_eq!(d.health(0), Some(Health::Dead));
        assert!(!d.healthy());
    }

    #[test]
    fn a_stalled_thread_stays_stalled_across_a_late_check_until_it_moves() {
        let mut t = Instant::now();
        let mut d = dog(t);
        run(&mut d, &mut t, T + Duration::from_millis(20), |_| 5);
        assert_eq!(d.health(0), Some(Health::Stalled));
        t += Duration::from_millis(300);
        assert!(d.check(t, &[live(5), live(1)]).is_empty());
        assert!(run(&mut d, &mut t, Duration::from_millis(50), |_| 5).is_empty());
        assert_eq!(d.health(0), Some(Health::Stalled));
    }

    #[test]
    fn a_late_check_judges_nobody_and_gives_a_fresh_timeout() {
        let mut t = Instant::now();
        let mut d = dog(t);
        run(&mut d, &mut t, Duration::from_millis(50), |i| i);
        // The control thread itself was not scheduled for 300 ms: the
        // frozen counters say nothing about the threads.
        t += Duration::from_millis(300);
        assert!(d.check(t, &[live(5), live(1)]).is_empty());
        assert!(d.healthy());
        // From then on the timeout counts again.
        let changes = run(&mut d, &mut t, T + Duration::from_millis(20), |_| 5);
        assert!(
            matches!(&changes[..], [Change::Stalled { name, .. }] if name == "worker 0"),
            "{changes:?}"
        );
    }
}
