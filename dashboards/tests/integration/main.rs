//! The dashboards' integration tests, in one test binary (one link of the
//! whole dependency tree instead of one per file): `model` loads and checks
//! the shipped dashboards; `lab_metrics` holds them to the metrics the real
//! binaries export in a lab (as root).

mod lab_metrics;
mod model;
