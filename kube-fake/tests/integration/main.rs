//! The fake API server's integration tests, in one test binary (one link of
//! the whole dependency tree instead of one per file): `fixtures` replays
//! the exchanges recorded from a real kube-apiserver (`tests/fixtures/`),
//! `kube_client` drives the fake with the real `kube` client and runtime.

mod fixtures;
mod kube_client;
mod leases;
