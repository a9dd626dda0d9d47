//! A route table in memory, for tests of the code that decides what is
//! announced.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{AnnounceError, RouteTable};

/// A table of host routes in memory; clones share it. Routes of a VIP
/// marked with [`FakeRoutes::fail`] are refused.
#[derive(Debug, Clone, Default)]
pub struct FakeRoutes {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    routes: BTreeSet<IpAddr>,
    failing: BTreeSet<IpAddr>,
}

impl FakeRoutes {
    /// An empty table.
    pub fn new() -> FakeRoutes {
        FakeRoutes::default()
    }

    /// The routes in the table.
    pub fn routes(&self) -> BTreeSet<IpAddr> {
        self.lock().routes.clone()
    }

    /// Makes every add or remove of `vip`'s route fail.
    pub fn fail(&self, vip: IpAddr) {
        self.lock().failing.insert(vip);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn each(
        &self,
        op: &'static str,
        ips: &[IpAddr],
        change: impl Fn(&mut BTreeSet<IpAddr>, IpAddr),
    ) -> Vec<Result<(), AnnounceError>> {
        let mut state = self.lock();
        ips.iter()
            .map(|ip| {
                if state.failing.contains(ip) {
                    return Err(AnnounceError::Route {
                        op,
                        vip: *ip,
                        table: 0,
                        source: io::Error::other("refused by the fake"),
                    });
                }
                change(&mut state.routes, *ip);
                Ok(())
            })
            .collect()
    }
}

impl RouteTable for FakeRoutes {
    fn list(&self) -> Result<BTreeSet<IpAddr>, AnnounceError> {
        Ok(self.routes())
    }

    fn add(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        self.each("add", ips, |routes, ip| {
            routes.insert(ip);
        })
    }

    fn remove(&self, ips: &[IpAddr]) -> Vec<Result<(), AnnounceError>> {
        self.each("remove", ips, |routes, ip| {
            routes.remove(&ip);
        })
    }

    fn device_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
