//! Keeps the kernel in step with the planned ruleset: remembers what was
//! last applied and sends only the difference, or recreates the table when
//! asked to (periodic resync) or when the last state is unknown.
//!
//! After any failure the applied state is unknown (someone may have changed
//! the table, or nft refused a diff), so the next sync is a full one; a
//! failed diff is retried at once as a full resync, as kube-proxy does.

use std::borrow::Cow;

use crate::nft::{NftBackend, NftError};
use crate::render::{render_diff, render_full};
use crate::ruleset::Ruleset;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The full resync was refused; the table's content is unknown.
    #[error("full resync of table inet portico failed: {0}")]
    Full(#[source] NftError),
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing changed since the last applied ruleset; nothing was sent.
    Unchanged,
    /// Only the changes were sent.
    Incremental,
    /// The table was recreated.
    Full,
    /// The diff was refused (its error is logged) and a full resync applied.
    FullAfterFailedDiff,
}

/// Applies rulesets through a backend, diffing against the last one applied.
#[derive(Debug)]
pub struct Syncer<B> {
    backend: B,
    applied: Option<Ruleset>,
}

impl<B: NftBackend> Syncer<B> {
    /// A syncer that knows nothing of the kernel yet (its first sync is full).
    pub fn new(backend: B) -> Self {
        Syncer {
            backend,
            applied: None,
        }
    }

    /// The backend, for listing what is loaded.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The ruleset last applied successfully, if it is known.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// Brings the kernel to `desired` with as small a transaction as possible.
    pub fn sync(&mut self, desired: &Ruleset) -> Result<SyncOutcome, SyncError> {
        self.sync_cow(Cow::Borrowed(desired))
    }

    /// [`sync`](Self::sync), keeping `desired` as the applied state without
    /// copying it (a large ruleset takes tens of milliseconds to clone).
    pub fn sync_owned(&mut self, desired: Ruleset) -> Result<SyncOutcome, SyncError> {
        self.sync_cow(Cow::Owned(desired))
    }

    fn sync_cow(&mut self, desired: Cow<'_, Ruleset>) -> Result<SyncOutcome, SyncError> {
        let Some(applied) = self.applied.take() else {
            return self.full(desired).map(|()| SyncOutcome::Full);
        };
        let Some(script) = render_diff(&applied, &desired) else {
            self.applied = Some(applied);
            return Ok(SyncOutcome::Unchanged);
        };
        match self.backend.apply(&script) {
            Ok(()) => {
                self.applied = Some(desired.into_owned());
                Ok(SyncOutcome::Incremental)
            }
            Err(e) => {
                tracing::warn!(error = %e, "incremental sync refused; recreating the table");
                self.full(desired)
                    .map(|()| SyncOutcome::FullAfterFailedDiff)
            }
        }
    }

    /// Applies a change computed by the caller, as two partial rulesets
    /// over the same names ([`crate::plan::PlanChange::rulesets`]): the
    /// script is rendered from those alone, so its cost follows the size of
    /// the change, not of the table. `before` must describe the last applied
    /// ruleset; `desired` gives the whole new one when a full resync is
    /// needed instead (nothing applied yet, or the diff refused).
    pub fn sync_change(
        &mut self,
        before: &Ruleset,
        after: &Ruleset,
        desired: impl FnOnce() -> Ruleset,
    ) -> Result<SyncOutcome, SyncError> {
        let partial = |r: &Ruleset| r.chains.values().all(|c| c.base.is_none());
        let applied = match self.applied.as_mut() {
            // A change never touches base chains; if it did, the diff of
            // two partial views would not describe the table.
            Some(applied) if partial(before) && partial(after) => applied,
            _ => return self.full(Cow::Owned(desired())).map(|()| SyncOutcome::Full),
        };
        let Some(script) = render_diff(before, after) else {
            return Ok(SyncOutcome::Unchanged);
        };
        match self.backend.apply(&script) {
            Ok(()) => {
                applied.apply_change(before, after);
                Ok(SyncOutcome::Incremental)
            }
            Err(e) => {
                tracing::warn!(error = %e, "incremental sync refused; recreating the table");
                self.applied = None;
                self.full(Cow::Owned(desired()))
                    .map(|()| SyncOutcome::FullAfterFailedDiff)
            }
        }
    }

    /// Recreates the table from `desired` whatever the kernel holds (the
    /// periodic resync that repairs outside changes).
    pub fn resync(&mut self, desired: &Ruleset) -> Result<SyncOutcome, SyncError> {
        self.applied = None;
        self.full(Cow::Borrowed(desired))
            .map(|()| SyncOutcome::Full)
    }

    /// [`resync`](Self::resync), keeping `desired` without copying it.
    pub fn resync_owned(&mut self, desired: Ruleset) -> Result<SyncOutcome, SyncError> {
        self.applied = None;
        self.full(Cow::Owned(desired)).map(|()| SyncOutcome::Full)
    }

    fn full(&mut self, desired: Cow<'_, Ruleset>) -> Result<(), SyncError> {
        self.backend
            .apply(&render_full(&desired))
            .map_err(SyncError::Full)?;
        self.applied = Some(desired.into_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::FakeNft;
    use crate::ruleset::Chain;

    fn ruleset(rule: &str) -> Ruleset {
        let mut r = Ruleset::default();
        r.chains.insert(
            "services".to_string(),
            Chain {
                base: None,
                rules: vec![rule.to_string()],
            },
        );
        r
    }

    #[test]
    fn first_sync_is_full_then_only_changes_are_sent() {
        let mut syncer = Syncer::new(FakeNft::new());
        let (a, b) = (ruleset("drop"), ruleset("accept"));
        assert_eq!(syncer.sync(&a).expect("sync"), SyncOutcome::Full);
        assert_eq!(syncer.sync(&a).expect("sync"), SyncOutcome::Unchanged);
        assert_eq!(syncer.sync(&b).expect("sync"), SyncOutcome::Incremental);
        let applied = syncer.backend().applied();
        assert_eq!(applied.len(), 2, "an unchanged sync sends nothing");
        assert_eq!(applied[0], render_full(&a));
        assert_eq!(applied[1], render_diff(&a, &b).expect("changed"));
        assert_eq!(syncer.applied(), Some(&b));
    }

    #[test]
    fn owned_syncs_send_the_same_scripts() {
        let mut syncer = Syncer::new(FakeNft::new());
        let (a, b) = (ruleset("drop"), ruleset("accept"));
        assert_eq!(
            syncer.sync_owned(a.clone()).expect("sync"),
            SyncOutcome::Full
        );
        assert_eq!(
            syncer.sync_owned(a.clone()).expect("sync"),
            SyncOutcome::Unchanged
        );
        assert_eq!(
            syncer.sync_owned(b.clone()).expect("sync"),
            SyncOutcome::Incremental
        );
        assert_eq!(
            syncer.resync_owned(b.clone()).expect("sync"),
            SyncOutcome::Full
        );
        assert_eq!(
            syncer.backend().applied(),
            [
                render_full(&a),
                render_diff(&a, &b).expect("changed"),
                render_full(&b)
            ]
        );
        assert_eq!(syncer.applied(), Some(&b));
    }

    #[test]
    fn a_planner_change_is_sent_alone_and_patches_the_applied_state() {
        use crate::plan::{PlanOptions, Planner};
        use portico_config::Node;

        let node = Node {
            name: "n1".to_string(),
            ..Node::default()
        };
        let mut planner = Planner::new(PlanOptions::default());
        let mut syncer = Syncer::new(FakeNft::new());
        let (before, after) = planner.update(&[], &[], &node).rulesets();
        // Nothing applied yet: the whole planned ruleset goes in.
        assert_eq!(
            syncer
                .sync_change(&before, &after, || planner.ruleset())
                .expect("sync"),
            SyncOutcome::Full
        );
        assert_eq!(syncer.applied(), Some(&planner.ruleset()));
        // An unchanged plan sends nothing.
        let (before, after) = planner.update(&[], &[], &node).rulesets();
        assert_eq!(
            syncer
                .sync_change(&before, &after, || planner.ruleset())
                .expect("sync"),
            SyncOutcome::Unchanged
        );
        // A refused change falls back to the whole ruleset.
        let mut partial = Ruleset::default();
        partial.chains.insert("x".to_string(), Chain::default());
        syncer.backend().fail_next("refused");
        assert_eq!(
            syncer
                .sync_change(&Ruleset::default(), &partial, || planner.ruleset())
                .expect("sync"),
            SyncOutcome::FullAfterFailedDiff
        );
        assert_eq!(
            syncer.backend().applied().last(),
            Some(&render_full(&planner.ruleset()))
        );
        // A change is applied as its own script and patched into the state.
        assert_eq!(
            syncer
                .sync_change(&Ruleset::default(), &partial, || planner.ruleset())
                .expect("sync"),
            SyncOutcome::Incremental
        );
        assert_eq!(
            syncer.backend().applied().last().map(String::as_str),
            Some("add chain inet portico x\n")
        );
        assert!(syncer.applied().expect("known").chains.contains_key("x"));
    }

    #[test]
    fn refused_diff_falls_back_to_a_full_resync() {
        let mut syncer = Syncer::new(FakeNft::new());
        let (a, b) = (ruleset("drop"), ruleset("accept"));
        syncer.sync(&a).expect("sync");
        syncer.backend().fail_next("table changed behind our back");
        assert_eq!(
            syncer.sync(&b).expect("sync"),
            SyncOutcome::FullAfterFailedDiff
        );
        assert_eq!(syncer.backend().applied().last(), Some(&render_full(&b)));
    }

    #[test]
    fn failed_full_sync_forgets_the_state_so_the_next_is_full() {
        let mut syncer = Syncer::new(FakeNft::new());
        let a = ruleset("drop");
        syncer.backend().fail_next("nft missing");
        let err = syncer.sync(&a).expect_err("refused");
        assert!(err.to_string().contains("nft missing"), "{err}");
        assert_eq!(syncer.applied(), None);
        assert_eq!(syncer.sync(&a).expect("sync"), SyncOutcome::Full);
        assert_eq!(syncer.resync(&a).expect("resync"), SyncOutcome::Full);
        assert_eq!(
            syncer.backend().applied(),
            [render_full(&a), render_full(&a)]
        );
    }
}
