//! Pure: which watches of a source are failing, whether the API server
//! answers the probe, and what to log about either.
//!
//! No IO and no clock: every call takes the `Instant` it happens at, so the
//! tests drive it with made-up times. [`crate::Watches`] holds one
//! [`Health`] per source behind a mutex and does the logging.
//!
//! Two different questions, kept apart on purpose:
//! - **Is the view stale?** Only the probe answers that ([`Health::stale`]):
//!   a healthy watch on a quiet cluster yields nothing for minutes, and one
//!   whose server went silent yields nothing until the client's read
//!   timeout, so silence from a watch proves nothing either way.
//! - **Is a watch failing?** Its own errors open an outage (logged once,
//!   then reminded every [`REMIND_EVERY`]); its own events close it. A
//!   resumed watch yields nothing until an object changes, so an answer of
//!   the probe sent after the watch's last error also closes it, but only
//!   when that error said the server as a whole was unavailable
//!   ([`ErrorKind::Unavailable`]): after a refusal of the watch itself
//!   (a 403, say) the probe answering proves nothing about the watch, and
//!   taking it for a recovery would log the outage afresh at every retry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A failing watch (or probe) is logged again, with its error count, this often.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What an error says about the API server as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer (connection refused or dropped, a timeout), or an answer
    /// that the server cannot serve now (5xx, 429): once the probe answers
    /// again, the watch's retries work again too.
    Unavailable,
    /// The server answered and refused this request itself (a 4xx other
    /// than 429, such as 403 Forbidden or 410 Expired), or answered
    /// something unreadable: only the watch's own events show it works.
    Refused,
}

impl ErrorKind {
    /// The kind of an error status with HTTP `code`.
    pub fn from_status(code: u16) -> ErrorKind {
        match code {
            429 => ErrorKind::Unavailable,
            400..=499 => ErrorKind::Refused,
            _ => ErrorKind::Unavailable,
        }
    }
}

/// What to log for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReport {
    /// It worked until now: log a warning.
    First,
    /// It has been failing for `failing_for` with `errors` errors and was
    /// last reported [`REMIND_EVERY`] ago: log a reminder.
    Reminder {
        /// Errors in this outage so far.
        errors: u64,
        /// Since the outage began.
        failing_for: Duration,
    },
    /// Already reported recently: debug level only.
    Quiet,
}

/// An outage that just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// How long it lasted (until the call that ended it).
    pub outage: Duration,
    /// Errors counted during it.
    pub errors: u64,
}

/// What an answer of the probe ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeAnswered {
    /// The API server's own outage, if it was failing to answer.
    pub api: Option<Recovered>,
    /// The watches whose outage the answer ended (see the module doc).
    pub watches: Vec<(&'static str, Recovered)>,
}

/// One outage of a watch or of the probe.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    last_error: Instant,
    last_kind: ErrorKind,
    errors: u64,
    last_report: Instant,
}

impl Outage {
    fn new(since: Instant, now: Instant, kind: ErrorKind) -> Outage {
        Outage {
            since,
            last_error: now,
            last_kind: kind,
            errors: 1,
            last_report: now,
        }
    }

    /// Counts one more error at `now`.
    fn error(&mut self, now: Instant, kind: ErrorKind) -> ErrorReport {
        self.errors += 1;
        self.last_error = self.last_error.max(now);
        self.last_kind = kind;
        if now.saturating_duration_since(self.last_report) >= REMIND_EVERY {
            self.last_report = now;
            ErrorReport::Reminder {
                errors: self.errors,
                failing_for: now.saturating_duration_since(self.since),
            }
        } else {
            ErrorReport::Quiet
        }
    }

    fn ended(&self, now: Instant) -> Recovered {
        Recovered {
            outage: now.saturating_duration_since(self.since),
            errors: self.errors,
        }
    }
}

/// The health of one source: its watches, named by resource, and its one
/// API probe.
#[derive(Debug, Clone)]
pub struct Health {
    watches: BTreeMap<&'static str, Outage>,
    /// When the last probe that was answered was sent (the start until
    /// then: staleness counts from there if the first probe fails).
    last_answer: Instant,
    api: Option<Outage>,
}

impl Health {
    /// A source started at `now`: nothing failing yet.
    pub fn new(now: Instant) -> Health {
        Health {
            watches: BTreeMap::new(),
            last_answer: now,
            api: None,
        }
    }

    /// Records an error of the watch of `resource` at `now` and says how
    /// to report it.
    pub fn watch_error(
        &mut self,
        resource: &'static str,
        kind: ErrorKind,
        now: Instant,
    ) -> ErrorReport {
        match self.watches.get_mut(resource) {
            Some(outage) => outage.error(now, kind),
            None => {
                self.watches.insert(resource, Outage::new(now, now, kind));
                ErrorReport::First
            }
        }
    }

    /// Records an event of the watch of `resource` at `now`: it works. Ends
    /// its outage, if any.
    pub fn watch_event(&mut self, resource: &'static str, now: Instant) -> Option<Recovered> {
        self.watches.remove(resource).map(|o| o.ended(now))
    }

    /// Whether the watch of `resource` is failing.
    pub fn failing(&self, resource: &str) -> bool {
        self.watches.contains_key(resource)
    }

    /// Records that a probe got no (good) answer by `now` and says how to
    /// report it. The outage counts from the last answer.
    pub fn probe_failed(&mut self, now: Instant) -> ErrorReport {
        match &mut self.api {
            Some(outage) => outage.error(now, ErrorKind::Unavailable),
            None => {
                self.api = Some(Outage::new(self.last_answer, now, ErrorKind::Unavailable));
                ErrorReport::First
            }
        }
    }

    /// Records at `now` that a probe sent at `sent` was answered. Ends the
    /// API server's outage and those of the watches that failed only for
    /// want of a server before `sent`; an answer to a probe sent before the
    /// last failure proves nothing about that failure.
    pub fn probe_answered(&mut self, sent: Instant, now: Instant) -> ProbeAnswered {
        self.last_answer = self.last_answer.max(sent);
        let mut answered = ProbeAnswered::default();
        if self.api.is_some_and(|o| sent >= o.last_error) {
            answered.api = self.api.take().map(|o| o.ended(now));
        }
        let over: Vec<&'static str> = self
            .watches
            .iter()
            .filter(|(_, o)| o.last_kind == ErrorKind::Unavailable && sent >= o.last_error)
            .map(|(resource, _)| *resource)
            .collect();
        for resource in over {
            if let Some(outage) = self.watches.remove(resource) {
                answered.watches.push((resource, outage.ended(now)));
            }
        }
        answered
    }

    /// How long the view may have been missing changes: since the last
    /// answer of the probe while the probe fails; zero while it answers.
    pub fn stale(&self, now: Instant) -> Duration {
        match self.api {
            Some(_) => now.saturating_duration_since(self.last_answer),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant) -> impl Fn(u64) -> Instant {
        move |secs| t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_watch_error_is_reported_once_then_reminded() {
        let s = at(Instant::now());
        let mut h = Health::new(s(0));
        let slices = "endpointslices";
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(0)),
            ErrorReport::First
        );
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(1)),
            ErrorReport::Quiet
        );
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(30)),
            ErrorReport::Quiet
        );
        // Another resource has its own outage.
        assert_eq!(
            h.watch_error("node", ErrorKind::Refused, s(5)),
            ErrorReport::First
        );
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(61)),
            ErrorReport::Reminder {
                errors: 4,
                failing_for: Duration::from_secs(61)
            }
        );
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(62)),
            ErrorReport::Quiet
        );
        assert!(h.failing(slices));
        assert!(!h.failing("services"));
        // Its own event ends it, once.
        assert_eq!(
            h.watch_event(slices, s(70)),
            Some(Recovered {
                outage: Duration::from_secs(70),
                errors: 5
            })
        );
        assert_eq!(h.watch_event(slices, s(71)), None, "already healthy");
        assert!(!h.failing(slices));
        // The next error is a new outage, reported again.
        assert_eq!(
            h.watch_error(slices, ErrorKind::Unavailable, s(90)),
            ErrorReport::First
        );
    }

    #[test]
    fn failing_watches_alone_do_not_make_the_view_stale() {
        let s = at(Instant::now());
        let mut h = Health::new(s(0));
        h.watch_error("services", ErrorKind::Refused, s(1));
        h.watch_error("nodes", ErrorKind::Unavailable, s(1));
        assert_eq!(h.stale(s(100)), Duration::ZERO);
    }

    #[test]
    fn staleness_counts_from_the_last_answer_while_the_probe_fails() {
        let s = at(Instant::now());
        let mut h = Health::new(s(0));
        assert_eq!(h.stale(s(1)), Duration::ZERO, "nothing failed yet");
        // Answered at 2 and 4 (probes sent then), silent from then on: the
        // probe sent at 6 times out at 8.
        assert_eq!(h.probe_answered(s(2), s(2)), ProbeAnswered::default());
        assert_eq!(h.probe_answered(s(4), s(4)), ProbeAnswered::default());
        assert_eq!(h.stale(s(7)), Duration::ZERO, "no failure known yet");
        assert_eq!(h.probe_failed(s(8)), ErrorReport::First);
        assert_eq!(h.stale(s(8)), Duration::from_secs(4));
        assert_eq!(h.stale(s(30)), Duration::from_secs(26), "grows");
        assert_eq!(h.probe_failed(s(10)), ErrorReport::Quiet, "one report");
        assert_eq!(
            h.probe_failed(s(68)),
            ErrorReport::Reminder {
                errors: 3,
                failing_for: Duration::from_secs(64)
            },
            "reminded, the outage counted from the last answer"
        );
        // An answer (to the probe sent at 70) clears it.
        let answered = h.probe_answered(s(70), s(71));
        assert_eq!(
            answered.api,
            Some(Recovered {
                outage: Duration::from_secs(67),
                errors: 3
            })
        );
        assert_eq!(h.stale(s(71)), Duration::ZERO);
        assert_eq!(h.stale(s(500)), Duration::ZERO, "zero while it answers");
        // The next failure is a new outage, reported again.
        assert_eq!(h.probe_failed(s(80)), ErrorReport::First);
        assert_eq!(h.stale(s(80)), Duration::from_secs(10));
    }

    #[test]
    fn a_first_probe_that_fails_counts_from_the_start() {
        let s = at(Instant::now());
        let mut h = Health::new(s(10));
        assert_eq!(h.probe_failed(s(12)), ErrorReport::First);
        assert_eq!(h.stale(s(13)), Duration::from_secs(3));
    }

    #[test]
    fn an_answer_to_a_probe_sent_before_the_last_failure_proves_nothing() {
        let s = at(Instant::now());
        let mut h = Health::new(s(0));
        h.probe_failed(s(5));
        assert_eq!(h.probe_answered(s(4), s(6)).api, None);
        assert_eq!(
            h.stale(s(6)),
            Duration::from_secs(2),
            "from the answer sent at 4"
        );
    }

    #[test]
    fn a_probe_answer_ends_the_outages_of_watches_that_lacked_a_server() {
        let s = at(Instant::now());
        let mut h = Health::new(s(0));
        // Three watches fail while the server is away; one of them is also
        // refused by it (403), and one fails again after the probe is sent.
        h.watch_error("services", ErrorKind::Unavailable, s(1));
        h.watch_error("nodes", ErrorKind::Unavailable, s(2));
        h.watch_error("slices", ErrorKind::Unavailable, s(2));
        h.watch_error("slices", ErrorKind::Refused, s(3));
        h.probe_failed(s(3));
        h.watch_error("nodes", ErrorKind::Unavailable, s(11));
        let answered = h.probe_answered(s(10), s(12));
        assert_eq!(
            answered,
            ProbeAnswered {
                api: Some(Recovered {
                    outage: Duration::from_secs(12),
                    errors: 1
                }),
                watches: vec![(
                    "services",
                    Recovered {
                        outage: Duration::from_secs(11),
                        errors: 1
                    }
                )],
            }
        );
        assert!(h.failing("nodes"), "failed after the probe was sent");
        assert!(
            h.failing("slices"),
            "refused: the probe says nothing about it"
        );
        // The next answer covers the later failure; the refusal stays.
        let answered = h.probe_answered(s(14), s(14));
        assert_eq!(answered.api, None);
        assert_eq!(
            answered.watches,
            [(
                "nodes",
                Recovered {
                    outage: Duration::from_secs(12),
                    errors: 2
                }
            )]
        );
        assert!(h.failing("slices"));
        assert_eq!(h.watch_event("slices", s(20)).map(|r| r.errors), Some(2));
    }

    #[test]
    fn error_kinds_of_statuses() {
        assert_eq!(ErrorKind::from_status(403), ErrorKind::Refused);
        assert_eq!(ErrorKind::from_status(410), ErrorKind::Refused);
        assert_eq!(ErrorKind::from_status(429), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::from_status(500), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::from_status(503), ErrorKind::Unavailable);
        // A status without a code says nothing about this request.
        assert_eq!(ErrorKind::from_status(0), ErrorKind::Unavailable);
    }
}
