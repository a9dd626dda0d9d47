//! Whether this edge presents itself to clients: ready (every listener
//! open, every node probed once), drained by an operator, stopping; and,
//! with `settings.announce`, the VIPs it announces because of that. The
//! control task owns one [`Presence`] and refreshes it whenever the
//! snapshot, the listeners or the drain state change, and every second
//! (which also puts back a route removed by hand).
//!
//! Readiness is the edge's own: node health does not enter it (every edge
//! sees the same nodes), so a VRRP pair's track script (`/readyz`) moves
//! the VIPs only away from an edge that cannot serve or is drained.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_config::AnnounceSettings;

use super::{handover_key, not_ready, wanted, AnnounceError, Announcer, PortState, RouteTable};
use crate::metrics::EdgeMetrics;

/// After a takeover, the routes the previous process announced are held at
/// most this long while the new process waits for its first health
/// results.
pub const TAKEOVER_HOLD_LIMIT: Duration = Duration::from_secs(30);

/// How long a look at BIRD's sessions may wait for each answer.
const BIRD_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the route table of `settings.announce`, in the edge's network
/// namespace; `inherited` is the device a previous process handed over.
pub trait RouteTables: Send + Sync {
    /// The table and its device.
    fn open(
        &self,
        settings: &AnnounceSettings,
        inherited: Option<OwnedFd>,
    ) -> Result<Box<dyn RouteTable>, AnnounceError>;
}

/// The real tables: [`super::TunRoutes`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TunTables;

impl RouteTables for TunTables {
    fn open(
        &self,
        settings: &AnnounceSettings,
        inherited: Option<OwnedFd>,
    ) -> Result<Box<dyn RouteTable>, AnnounceError> {
        Ok(Box::new(super::TunRoutes::open(settings, inherited)?))
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    /// Ready to serve and not drained.
    pub ready: bool,
    /// Drained by an operator.
    pub drained: bool,
    /// Stopping.
    pub stopping: bool,
    /// What readiness waits for (listeners not open, nodes not probed).
    pub waiting: Vec<String>,
    /// The VIPs announced (`settings.announce` only).
    pub announced: Vec<IpAddr>,
}

/// The edge's presence: readiness, drain, and the announced VIPs.
pub struct Presence {
    tables: Option<Arc<dyn RouteTables>>,
    settings: Option<AnnounceSettings>,
    announcer: Option<Announcer>,
    /// Devices handed over by a previous process, by handover key.
    inherited: HashMap<String, OwnedFd>,
    /// Until when routes found at takeover are held at most.
    hold_until: Option<Instant>,
    drained: bool,
    stopping: bool,
    readiness: Readiness,
    /// Every VIP served, for the announced gauge.
    vips: BTreeSet<IpAddr>,
    /// The VIPs the announced gauge has a series for.
    exported: BTreeSet<String>,
    metrics: EdgeMetrics,
    /// Whether a failure to open the table was already logged.
    reported: bool,
    /// Whether a look at BIRD's sessions is under way.
    polling: Arc<AtomicBool>,
    /// Whether BIRD's silence was logged (once until it answers again).
    bird_silent: Arc<AtomicBool>,
}

impl Presence {
    /// A presence that announces through `tables` (`None`: never
    /// announces, whatever the config says), adopting the devices among
    /// `inherited` (taken out of it) after a takeover.
    pub fn new(
        tables: Option<Arc<dyn RouteTables>>,
        inherited: &mut HashMap<String, OwnedFd>,
        metrics: EdgeMetrics,
    ) -> Presence {
        let handed: Vec<String> = inherited
            .keys()
            .filter(|k| k.starts_with("announce/"))
            .cloned()
            .collect();
        let inherited: HashMap<String, OwnedFd> = handed
            .into_iter()
            .filter_map(|k| inherited.remove(&k).map(|fd| (k, fd)))
            .collect();
        let hold_until = (!inherited.is_empty()).then(|| Instant::now() + TAKEOVER_HOLD_LIMIT);
        Presence {
            tables,
            settings: None,
            announcer: None,
            inherited,
            hold_until,
            drained: false,
            stopping: false,
            readiness: Readiness::default(),
            vips: BTreeSet::new(),
            exported: BTreeSet::new(),
            metrics,
            reported: false,
            polling: Arc::new(AtomicBool::new(false)),
            bird_silent: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks the BIRD beside the edge for its sessions, off the caller's
    /// thread, and exports them (nothing without `settings.announce`, or
    /// while the previous look is still under way). Needs a tokio runtime.
    pub fn poll_bird(&self) {
        let Some(settings) = &self.settings else {
            return;
        };
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (socket, metrics, polling, silent) = (
            settings.bird_socket.clone(),
            self.metrics.clone(),
            self.polling.clone(),
            self.bird_silent.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let looked = super::bird::sessions(&socket, BIRD_TIMEOUT);
            metrics.bgp_session_up.reset();
            metrics.bfd_session_up.reset();
            match looked {
                Ok(sessions) => {
                    metrics.bird_up.set(1);
                    silent.store(false, Ordering::Relaxed);
                    for s in sessions.bgp {
                        metrics
                            .bgp_session_up
                            .with_label_values(&[&s.name])
                            .set(i64::from(s.up));
                    }
                    for s in sessions.bfd {
                        metrics
                            .bfd_session_up
                            .with_label_values(&[&s.name])
                            .set(i64::from(s.up));
                    }
                }
                Err(e) => {
                    if !silent.swap(true, Ordering::Relaxed) {
                        tracing::warn!(socket = %socket.display(), error = %e, "BIRD does not answer on its control socket; the VIPs stay in the route table for it");
                    }
                    metrics.bird_up.set(0);
                }
            }
            polling.store(false, Ordering::Release);
        });
    }

    /// Takes `settings.announce` (at start and at each reload): opens the
    /// table when announcing starts or its table or device changed,
    /// withdraws everything and closes it when announcing stops.
    pub fn configure(&mut self, settings: Option<&AnnounceSettings>) {
        let same_table =
            |a: &AnnounceSettings, b: &AnnounceSettings| a.table == b.table && a.device == b.device;
        let reopen = match (&self.settings, settings) {
            (Some(old), Some(new)) => !same_table(old, new),
            (None, None) => false,
            _ => true,
        };
        if reopen {
            self.close();
        }
        self.settings = settings.cloned();
        if self.announcer.is_none() {
            self.open();
        }
    }

    /// Opens the table of the current settings (retried at each refresh
    /// until it works).
    fn open(&mut self) {
        let (Some(settings), Some(tables)) = (&self.settings, &self.tables) else {
            return;
        };
        let inherited = self.inherited.remove(&handover_key(&settings.device));
        let adopted = inherited.is_some();
        match tables.open(settings, inherited) {
            Ok(table) => {
                tracing::info!(device = %settings.device, table = settings.table, adopted, "announcing VIPs through a routing table");
                self.announcer = Some(Announcer::new(table, adopted));
                self.reported = false;
            }
            Err(e) => {
                self.metrics.announce_errors.inc();
                if !self.reported {
                    tracing::error!(error = %e, "cannot announce VIPs; retrying every second");
                }
                self.reported = true;
            }
        }
    }

    /// Withdraws every route and closes the device.
    fn close(&mut self) {
        if let Some(mut announcer) = self.announcer.take() {
            announcer.end_hold();
            self.record(announcer.reconcile(&BTreeSet::new()));
        }
    }

    /// Decides readiness and the announced VIPs from the listeners' state
    /// (listener key, port state), and brings the table there.
    pub fn refresh(&mut self, ports: Vec<(String, PortState)>) {
        if self.announcer.is_none() {
            self.open();
        }
        let waiting = not_ready(ports.iter().cloned());
        let fully_probed = ports.iter().all(|(_, p)| p.probed);
        self.vips = ports.iter().map(|(_, p)| p.vip).collect();
        let withdraw_unhealthy = self
            .settings
            .as_ref()
            .is_some_and(|s| s.withdraw_when_no_healthy_node);
        let want = if self.drained || self.stopping {
            BTreeSet::new()
        } else {
            wanted(ports.into_iter().map(|(_, p)| p), withdraw_unhealthy)
        };
        if let Some(announcer) = &mut self.announcer {
            let hold_over = self.hold_until.is_none_or(|t| Instant::now() >= t);
            if announcer.holding() && (fully_probed || hold_over || self.stopping) {
                if !fully_probed && !self.stopping {
                    tracing::warn!(limit = ?TAKEOVER_HOLD_LIMIT, "nodes still not all probed after the takeover; routes no longer held");
                }
                announcer.end_hold();
                self.hold_until = None;
            }
            let errors = announcer.reconcile(&want);
            self.record(errors);
        }
        self.readiness = Readiness {
            ready: waiting.is_empty() && !self.drained && !self.stopping,
            drained: self.drained,
            stopping: self.stopping,
            waiting,
            announced: self.announced().iter().copied().collect(),
        };
        self.export();
    }

    fn record(&self, errors: Vec<AnnounceError>) {
        for e in errors {
            self.metrics.announce_errors.inc();
            tracing::error!(error = %e, "announcing VIPs failed");
        }
    }

    fn export(&mut self) {
        let announced = self.announced();
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        if self.settings.is_some() {
            for vip in &self.vips {
                seen.insert(vip.to_string(), i64::from(announced.contains(vip)));
            }
        }
        // Series of VIPs gone are removed; the others are set in place, so
        // a scrape never finds one missing.
        for gone in self.exported.iter().filter(|v| !seen.contains_key(*v)) {
            if let Err(e) = self.metrics.announced.remove_label_values(&[gone]) {
                tracing::debug!(vip = %gone, error = %e, "no announced series to remove");
            }
        }
        for (vip, value) in &seen {
            self.metrics.announced.with_label_values(&[vip]).set(*value);
        }
        self.exported = seen.into_keys().collect();
        self.metrics.ready.set(i64::from(self.readiness.ready));
        self.metrics.drained.set(i64::from(self.drained));
    }

    fn announced(&self) -> BTreeSet<IpAddr> {
        self.announcer
            .as_ref()
            .map(|a| a.announced().clone())
            .unwrap_or_default()
    }

    /// Drains (`true`) or undrains the edge; the caller refreshes.
    pub fn set_drained(&mut self, drained: bool) {
        if drained != self.drained {
            tracing::info!(drained, "drain state changed");
        }
        self.drained = drained;
    }

    /// From now on nothing is announced; the caller refreshes. Returns
    /// whether something was announced until now (a withdraw then needs
    /// time to reach the routers).
    pub fn stop(&mut self) -> bool {
        self.stopping = true;
        !self.announced().is_empty()
    }

    /// What `/readyz` answers, as of the last refresh.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The withdraw grace of the announce settings, zero without them.
    pub fn withdraw_grace(&self) -> Duration {
        self.settings
            .as_ref()
            .map_or(Duration::ZERO, |s| s.withdraw_grace)
    }

    /// The device's descriptor to hand over, under its handover key.
    pub fn handover_fd(&self) -> Option<(String, BorrowedFd<'_>)> {
        let settings = self.settings.as_ref()?;
        let fd = self.announcer.as_ref()?.table().device_fd()?;
        Some((handover_key(&settings.device), fd))
    }

    /// After a handover: the new process owns the device and its routes;
    /// forget them without withdrawing anything.
    pub fn forget(&mut self) {
        self.announcer = None;
        self.settings = None;
    }
}
