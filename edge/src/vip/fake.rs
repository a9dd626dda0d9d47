//! A fake [`AddressOps`] for tests: it only keeps books.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use super::{AddressOps, VipError};

/// One call made to a [`FakeAddressOps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `add(ifname, ip)`.
    Add(String, IpAddr),
    /// `remove(ifname, ip)`.
    Remove(String, IpAddr),
    /// `announce(ifname, ip)`.
    Announce(String, IpAddr),
}

#[derive(Debug, Default)]
struct FakeState {
    present: BTreeSet<(String, IpAddr)>,
    failing: BTreeSet<IpAddr>,
    failing_announce: BTreeSet<IpAddr>,
    calls: Vec<FakeCall>,
}

/// An [`AddressOps`] that only keeps books: which addresses are "on" which
/// interface, and every call made, for tests of code using [`VipManager`].
#[derive(Debug, Default)]
pub struct FakeAddressOps {
    state: Mutex<FakeState>,
}

impl FakeAddressOps {
    /// No addresses anywhere, nothing failing.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has already failed;
        // the books are still readable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `ip` on `ifname` as if someone else had.
    pub fn set_present(&self, ifname: &str, ip: IpAddr) {
        self.state().present.insert((ifname.to_owned(), ip));
    }

    /// Whether `ip` is on `ifname`.
    pub fn is_present(&self, ifname: &str, ip: IpAddr) -> bool {
        self.state().present.contains(&(ifname.to_owned(), ip))
    }

    /// Makes every add and remove of `ip` fail (or succeed again).
    pub fn set_failing(&self, ip: IpAddr, failing: bool) {
        let mut state = self.state();
        if failing {
            state.failing.insert(ip);
        } else {
            state.failing.remove(&ip);
        }
    }

    /// Makes announcing `ip` fail.
    pub fn set_announce_failing(&self, ip: IpAddr) {
        self.state().failing_announce.insert(ip);
    }

    /// Returns and clears the calls made so far.
    pub fn take_calls(&self) -> Vec<FakeCall> {
        std::mem::take(&mut self.state().calls)
    }

    fn fail(op: &'static str, ifname: &str, ip: IpAddr) -> VipError {
        VipError::Netlink {
            op,
            ifname: ifname.to_owned(),
            ip,
            source: io::Error::other("injected failure"),
            kernel_message: None,
        }
    }
}

impl AddressOps for FakeAddressOps {
    fn add_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<bool, VipError>> {
        let mut state = self.state();
        ips.iter()
            .map(|&ip| {
                state.calls.push(FakeCall::Add(ifname.to_owned(), ip));
                if state.failing.contains(&ip) {
                    return Err(Self::fail("add", ifname, ip));
                }
                Ok(state.present.insert((ifname.to_owned(), ip)))
            })
            .collect()
    }

    fn remove_all(&self, ifname: &str, ips: &[IpAddr]) -> Vec<Result<(), VipError>> {
        let mut state = self.state();
        ips.iter()
            .map(|&ip| {
                state.calls.push(FakeCall::Remove(ifname.to_owned(), ip));
                if state.failing.contains(&ip) {
                    return Err(Self::fail("remove", ifname, ip));
                }
                state.present.remove(&(ifname.to_owned(), ip));
                Ok(())
            })
            .collect()
    }

    fn announce(&self, ifname: &str, ip: IpAddr) -> Result<(), VipError> {
        let mut state = self.state();
        state.calls.push(FakeCall::Announce(ifname.to_owned(), ip));
        if state.failing_announce.contains(&ip) {
            return Err(Self::fail("announce", ifname, ip));
        }
        Ok(())
    }
}
