//! Benchmarks for `SourceRangeSet`: lookup time must stay roughly flat from
//! 10 to 10,000 ranges, where a linear scan over the networks (the baseline
//! measured here too) grows with the number of ranges.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use ipnetwork::IpNetwork;
use portico_edge::source_ranges::SourceRangeSet;
use portico_edge::testing::SplitMix64;

/// Clients looked up in turn; a power of two so the index wraps with a mask.
const CLIENTS: usize = 4096;

/// A random global-unicast IPv6 address (2000::/3).
fn random_v6(rng: &mut SplitMix64) -> Ipv6Addr {
    let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    Ipv6Addr::from((bits >> 3) | (1 << 125))
}

/// Mostly IPv4 /8 to /32 anywhere in the address space, one in ten IPv6
/// /32 to /128.
fn random_networks(rng: &mut SplitMix64, n: usize) -> Vec<IpNetwork> {
    (0..n)
        .map(|_| {
            if rng.below(10) == 0 {
                let prefix = 32 + rng.below(97) as u8;
                IpNetwork::new(random_v6(rng).into(), prefix).expect("prefix <= 128")
            } else {
                let prefix = 8 + rng.below(25) as u8;
                IpNetwork::new(Ipv4Addr::from(rng.next_u64() as u32).into(), prefix)
                    .expect("prefix <= 32")
            }
        })
        .collect()
}

/// Half the clients are inside a random one of `networks` (so hits are
/// measured, not only misses), the rest anywhere (one in ten IPv6).
fn random_clients(rng: &mut SplitMix64, networks: &[IpNetwork]) -> Vec<IpAddr> {
    (0..CLIENTS)
        .map(|_| {
            if rng.below(2) == 0 {
                match networks[rng.below(networks.len() as u64) as usize] {
                    IpNetwork::V4(n) => {
                        let host = (rng.next_u64() as u32) & !u32::from(n.mask());
                        Ipv4Addr::from(u32::from(n.network()) | host).into()
                    }
                    IpNetwork::V6(n) => {
                        let host = u128::from(random_v6(rng)) & !u128::from(n.mask());
                        Ipv6Addr::from(u128::from(n.network()) | host).into()
                    }
                }
            } else if rng.below(10) == 0 {
                random_v6(rng).into()
            } else {
                Ipv4Addr::from(rng.next_u64() as u32).into()
            }
        })
        .collect()
}

/// Clients in none of the ranges (one in ten IPv6): the worst case for a
/// linear scan, which cannot stop early.
fn missing_clients(rng: &mut SplitMix64, set: &SourceRangeSet) -> Vec<IpAddr> {
    let mut clients = Vec::with_capacity(CLIENTS);
    while clients.len() < CLIENTS {
        let ip: IpAddr = if rng.below(10) == 0 {
            random_v6(rng).into()
        } else {
            Ipv4Addr::from(rng.next_u64() as u32).into()
        };
        if !set.contains(ip) {
            clients.push(ip);
        }
    }
    clients
}

/// What a set replaces: checking every network in turn.
fn linear_scan(networks: &[IpNetwork], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

/// Times `contains` over `clients`, one client per iteration.
fn bench_lookups(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    clients: &[IpAddr],
    contains: impl Fn(IpAddr) -> bool,
) {
    group.bench_function(id, |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (CLIENTS - 1);
            contains(black_box(clients[i]))
        });
    });
}

fn contains(c: &mut Criterion) {
    let mut group = c.benchmark_group("source_ranges/contains");
    for n in [10, 100, 1_000, 10_000] {
        let mut rng = SplitMix64(n as u64);
        let networks = random_networks(&mut rng, n);
        let clients = random_clients(&mut rng, &networks);
        let set = SourceRangeSet::new(&networks);
        let hits = clients.iter().filter(|&&ip| set.contains(ip)).count();
        eprintln!(
            "{n} ranges: {} merged intervals, {:.0}% of clients hit",
            set.len(),
            100.0 * hits as f64 / CLIENTS as f64
        );

        bench_lookups(&mut group, BenchmarkId::new("set", n), &clients, |ip| {
            set.contains(ip)
        });
        if n == 10_000 {
            // Random /8s cover most of IPv4, so a scan over mixed clients
            // often stops early; clients that match nothing show its full
            // cost, which is what an attacker outside the ranges triggers.
            let misses = missing_clients(&mut rng, &set);
            bench_lookups(&mut group, BenchmarkId::new("set_miss", n), &misses, |ip| {
                set.contains(ip)
            });
            bench_lookups(
                &mut group,
                BenchmarkId::new("linear_scan", n),
                &clients,
                |ip| linear_scan(&networks, ip),
            );
            bench_lookups(
                &mut group,
                BenchmarkId::new("linear_scan_miss", n),
                &misses,
                |ip| linear_scan(&networks, ip),
            );
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let networks = random_networks(&mut SplitMix64(1), 10_000);
    c.bench_function("source_ranges/build/10000", |b| {
        b.iter(|| SourceRangeSet::new(black_box(&networks)));
    });
}

criterion_group!(benches, contains, build);
criterion_main!(benches);
