//! A failover result in words: the log line, the per-second timeline text
//! with the kill and the link coming back marked, and the Markdown table of
//! all results.

use std::fmt::Write as _;
use std::time::Duration;

use super::FailoverResult;

impl FailoverResult {
    /// One line for the run log.
    pub fn line(&self) -> String {
        format!(
            "failover {} run {}: {} connections, {} failed, {} slow; detection {}, last SYN {}, recovery {}, p99 during failover {}",
            self.contender,
            self.run,
            self.sent,
            self.failed(),
            self.slow,
            with_unit(self.detection, "never"),
            with_unit(self.last_syn, "-"),
            with_unit(self.recovery, "none"),
            self.p99_failover
                .map_or("-".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        )
    }

    /// The compact per-second table, with the kill and the link coming
    /// back marked.
    pub fn timeline_text(&self) -> String {
        let mut out = format!(
            "{} (run {}): node-2 link down at {:.2} s, up at {:.2} s\n   s  sent    ok  fail  slow  node-1 node-2 | syn>n2 resyn>n2\n",
            self.contender,
            self.run,
            self.killed.as_secs_f64(),
            self.restored.as_secs_f64()
        );
        for (i, r) in self.timeline.iter().enumerate() {
            let mut marks = String::new();
            for (at, what) in [(self.killed, "link down"), (self.restored, "link up")] {
                if at.as_secs() as usize == i {
                    marks.push_str(&format!("  <- {what}"));
                }
            }
            let _ = writeln!(
                out,
                "{i:>4} {:>5} {:>5} {:>5} {:>5} {:>7} {:>6} | {:>6} {:>8}{marks}",
                r.sent, r.ok, r.failed, r.slow, r.node1, r.node2, r.syn, r.resyn
            );
        }
        for (at, outcome) in &self.failures {
            let _ = writeln!(
                out,
                "  failed: started {:.2} s: {outcome:?}",
                at.as_secs_f64()
            );
        }
        out
    }
}

fn with_unit(d: Option<Duration>, none: &str) -> String {
    d.map_or(none.to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn secs(d: Option<Duration>, none: &str) -> String {
    d.map_or(none.to_string(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// The failover table, in Markdown.
pub fn failover_markdown(results: &[FailoverResult]) -> String {
    let mut out = String::from(
        "| contender | failed connections | slow connections | detection (s) | last SYN to node 2 incl. retransmits (s) | recovery (s) | p99 latency during failover |\n|---|---|---|---|---|---|---|\n",
    );
    let several = results.iter().any(|r| r.run > 1);
    for r in results {
        let name = if several {
            format!("{} #{}", r.contender, r.run)
        } else {
            r.contender.to_string()
        };
        let mut kinds = Vec::new();
        for (n, kind) in [
            (r.refused, "refused"),
            (r.closed, "closed"),
            (r.timed_out, "timed out"),
            (r.other, "other"),
        ] {
            if n > 0 {
                kinds.push(format!("{n} {kind}"));
            }
        }
        if r.in_flight > 0 {
            kinds.push(format!("{} in flight at the kill", r.in_flight));
        }
        let failed = if kinds.is_empty() {
            format!("0 of {}", r.sent)
        } else {
            format!("{} of {} ({})", r.failed(), r.sent, kinds.join(", "))
        };
        let _ = writeln!(
            out,
            "| {name} | {failed} | {} | {} | {} | {} | {} |",
            r.slow,
            secs(r.detection, "never"),
            secs(r.last_syn, "-"),
            secs(r.recovery, "none"),
            r.p99_failover.map_or("-".to_string(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1000.0
            )),
        );
    }
    out.push_str(
        "\n(failed: refused, reset/closed or no answer within the timeout; slow: answered above the slow threshold; detection: last first SYN the balancer sent to node 2 after the kill, \"never\" if it still sent one in the last second before the link came back; recovery: link up -> first answer by node 2; p99 over connections started between the kill and link up, failures at the time they failed)\n",
    );
    out
}
