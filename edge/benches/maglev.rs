//! Benchmarks for Maglev consistent hashing: table build time, per-flow
//! lookup cost, and (printed once, not timed) how many flows move when one
//! of 1,000 nodes leaves.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico_edge::maglev::{flow_hash, MaglevBackend, MaglevTable};
use portico_edge::testing::SplitMix64;

/// The usual table size: prime, and over 100 slots per node up to ~650 nodes.
const M: u32 = 65_537;
/// Flow hashes looked up in turn; a power of two so the index wraps with a
/// mask.
const FLOWS: usize = 4096;

fn node_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:04}")).collect()
}

fn equal_weights(names: &[String]) -> Vec<MaglevBackend<'_>> {
    names
        .iter()
        .map(|id| MaglevBackend { id, weight: 1 })
        .collect()
}

fn random_clients(n: usize, seed: u64) -> Vec<SocketAddr> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            SocketAddrV4::new(Ipv4Addr::from(r as u32), (r >> 32) as u16).into()
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev/build");
    group.sample_size(10);
    for n in [100, 1_000] {
        let names = node_names(n);
        let backends = equal_weights(&names);
        group.bench_with_input(BenchmarkId::new("m65537", n), &backends, |b, backends| {
            b.iter(|| MaglevTable::build(black_box(backends), M).expect("valid input"));
        });
    }
    // The size the paper's `M >= 100 * N` rule asks for at 1,000 nodes.
    let names = node_names(1_000);
    let backends = equal_weights(&names);
    group.bench_function(BenchmarkId::new("m655373", 1_000), |b| {
        b.iter(|| MaglevTable::build(black_box(&backends), 655_373).expect("valid input"));
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let names = node_names(1_000);
    let table = MaglevTable::build(&equal_weights(&names), M).expect("valid input");
    let clients = random_clients(FLOWS, 1);
    let hashes: Vec<u64> = clients.iter().map(|&a| flow_hash(a, false)).collect();

    let mut group = c.benchmark_group("maglev/1000_nodes");
    group.bench_function("flow_hash", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (FLOWS - 1);
            flow_hash(black_box(clients[i]), false)
        });
    });
    group.bench_function("lookup", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (FLOWS - 1);
            table.lookup(black_box(hashes[i]))
        });
    });
    group.bench_function("flow_hash+lookup", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (FLOWS - 1);
            table.lookup(flow_hash(black_box(clients[i]), false))
        });
    });
    group.bench_function("candidates_first", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (FLOWS - 1);
            table.candidates(black_box(hashes[i])).next()
        });
    });
    group.bench_function("candidates_first_two", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (FLOWS - 1);
            let mut candidates = table.candidates(black_box(hashes[i]));
            (candidates.next(), candidates.next())
        });
    });
    group.finish();
}

/// Not a timing: the disruption Maglev causes when a node leaves, compared
/// with the ideal of moving only that node's flows. Also at a table ten
/// times larger, because the extra disruption shrinks as `M / N` grows (the
/// paper recommends `M >= 100 * N`).
fn report_disruption() {
    const N: usize = 1_000;
    let names = node_names(N);
    let leaving = names[N / 2].as_str();
    let survivors: Vec<MaglevBackend<'_>> = equal_weights(&names)
        .into_iter()
        .filter(|b| b.id != leaving)
        .collect();
    let hashes: Vec<u64> = random_clients(1_000_000, 2)
        .into_iter()
        .map(|client| flow_hash(client, false))
        .collect();

    for m in [M, 655_373] {
        let before = MaglevTable::build(&equal_weights(&names), m).expect("valid input");
        let after = MaglevTable::build(&survivors, m).expect("valid input");
        let (mut moved, mut from_survivors) = (0usize, 0usize);
        for &h in &hashes {
            let old = before.lookup(h).and_then(|i| before.backend_id(i));
            let new = after.lookup(h).and_then(|i| after.backend_id(i));
            if old != new {
                moved += 1;
                from_survivors += usize::from(old != Some(leaving));
            }
        }
        let total = hashes.len() as f64;
        println!(
            "share of flows moved when one of {N} nodes leaves: {:.5} (ideal 1/N = {:.3}); \
             from surviving nodes: {:.5}; M = {m}, over {} flow hashes",
            moved as f64 / total,
            1.0 / N as f64,
            from_survivors as f64 / total,
            hashes.len(),
        );
    }
}

fn disruption(_: &mut Criterion) {
    report_disruption();
}

criterion_group!(benches, disruption, build, lookup);
criterion_main!(benches);
