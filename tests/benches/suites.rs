//! A policy suite of 1,000 cases through `wayplug test`'s runner: the
//! store suite's cases (both built-in plugins: AuthorizationPolicy with CEL
//! and principals, HTTPRoute with rewrites and a redirect) repeated to
//! 1,000, run 8 at a time through `Pipeline::handle` with the in-process
//! upstream. Loading the waypoint is outside the measurement.
//!
//! Run: `cargo bench -p wayplug-tests --bench suites`.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use wayplug::testing::{Case, OfflineWaypoint, Suite};

const CASES: usize = 1000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/store.yaml");
    let suite = Suite::load(&path).unwrap();
    let waypoint = Arc::new(rt.block_on(OfflineWaypoint::build(&suite, None)).unwrap());
    let cases: Vec<Case> = (0..CASES)
        .map(|i| {
            let mut case = suite.cases[i % suite.cases.len()].clone();
            case.index = i;
            case.name = format!("{} #{i}", case.name);
            case
        })
        .collect();
    let check = rt.block_on(waypoint.run(&cases, 8));
    assert!(
        check.iter().all(|r| r.passed()),
        "the cases pass before they are timed"
    );

    let mut g = c.benchmark_group("suites");
    g.sample_size(10);
    g.bench_function("store_1000_cases", |b| {
        b.to_async(&rt).iter(|| async {
            let results = waypoint.run(&cases, 8).await;
            assert_eq!(results.len(), CASES);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
