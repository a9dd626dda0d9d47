//! An in-memory conntrack table, for tests of the code that decides what
//! to delete.

use std::sync::{Mutex, MutexGuard};

use crate::{Conntrack, ConntrackError, Flow, Protocol};

/// A conntrack table in memory: holds flows, records deletes and lists,
/// and can be told to fail.
#[derive(Debug, Default)]
pub struct Fake {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    flows: Vec<Flow>,
    deleted: Vec<Flow>,
    lists: usize,
    fail_next: Option<String>,
}

impl Fake {
    /// An empty table.
    pub fn new() -> Fake {
        Fake::default()
    }

    /// Adds a flow, as a packet would.
    pub fn insert(&self, flow: Flow) {
        self.lock().flows.push(flow);
    }

    /// The flows in the table.
    pub fn flows(&self) -> Vec<Flow> {
        self.lock().flows.clone()
    }

    /// Every flow deleted so far, oldest first.
    pub fn deleted(&self) -> Vec<Flow> {
        self.lock().deleted.clone()
    }

    /// How many times the table was listed.
    pub fn lists(&self) -> usize {
        self.lock().lists
    }

    /// Makes the next call fail with `message` (and change nothing).
    pub fn fail_next(&self, message: impl Into<String>) {
        self.lock().fail_next = Some(message.into());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Conntrack for Fake {
    fn list(&self, protocol: Protocol) -> Result<Vec<Flow>, ConntrackError> {
        let mut state = self.lock();
        if let Some(message) = state.fail_next.take() {
            return Err(ConntrackError::Injected(message));
        }
        state.lists += 1;
        Ok(state
            .flows
            .iter()
            .filter(|f| f.protocol == protocol)
            .cloned()
            .collect())
    }

    fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        let mut state = self.lock();
        if let Some(message) = state.fail_next.take() {
            return Err(ConntrackError::Injected(message));
        }
        let mut deleted = 0;
        for flow in flows {
            // As the kernel: by the original tuple, and by id when known.
            let found = state.flows.iter().position(|f| {
                f.protocol == flow.protocol
                    && f.original == flow.original
                    && (flow.id.is_none() || f.id == flow.id)
            });
            if let Some(i) = found {
                let gone = state.flows.remove(i);
                state.deleted.push(gone);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client_port: u16, endpoint: &str) -> Flow {
        Flow::new(
            Protocol::Udp,
            format!("192.0.2.1:{client_port}").parse().unwrap(),
            "10.96.0.53:53".parse().unwrap(),
            endpoint.parse().unwrap(),
        )
    }

    #[test]
    fn deletes_by_original_tuple_and_counts_only_what_was_there() {
        let fake = Fake::new();
        fake.insert(flow(1000, "10.244.0.10:53"));
        fake.insert(flow(1001, "10.244.0.11:53"));
        let mut tcp = flow(1002, "10.244.0.10:53");
        tcp.protocol = Protocol::Tcp;
        fake.insert(tcp.clone());

        assert_eq!(fake.list(Protocol::Udp).unwrap().len(), 2);
        let gone = flow(1000, "10.244.0.10:53");
        assert_eq!(fake.delete(&[gone.clone(), gone.clone()]).unwrap(), 1);
        assert_eq!(fake.deleted(), [gone]);
        assert_eq!(fake.flows(), [flow(1001, "10.244.0.11:53"), tcp]);
        assert_eq!(fake.lists(), 1);

        fake.fail_next("boom");
        let err = fake.list(Protocol::Udp).unwrap_err();
        assert_eq!(err.to_string(), "injected failure: boom");
        assert_eq!(fake.lists(), 1, "a failed list is not counted");
    }

    #[test]
    fn an_id_restricts_the_delete_to_that_entry() {
        let fake = Fake::new();
        let mut current = flow(1000, "10.244.0.11:53");
        current.id = Some(2);
        fake.insert(current.clone());
        let mut listed_earlier = flow(1000, "10.244.0.10:53");
        listed_earlier.id = Some(1);
        assert_eq!(fake.delete(&[listed_earlier]).unwrap(), 0);
        assert_eq!(fake.flows(), [current]);
    }
}
