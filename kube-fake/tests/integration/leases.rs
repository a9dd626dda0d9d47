//! Leases (`coordination.k8s.io/v1`) as leader election uses them: the
//! edge's elector (`kube-lease-manager`) against the fake, two candidates
//! on one Lease, and the real server's validation.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube_lease_manager::LeaseManagerBuilder;
use portico_kube_fake::FakeApiServer;
use serde_json::json;

/// A candidate: its leadership channel and its task.
async fn candidate(
    server: &FakeApiServer,
    identity: &str,
) -> (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    LeaseManagerBuilder::new(server.client(), "portico-edge")
        .with_namespace("kube-system")
        .with_identity(identity)
        .with_field_manager(format!("portico-edge-{identity}"))
        .with_duration(3)
        .with_grace(1)
        .build()
        .await
        .expect("lease manager")
        .watch()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_the_other_takes_over_when_it_dies() {
    let server = FakeApiServer::start().await;
    let (mut a, task_a) = candidate(&server, "edge-a").await;
    let (mut b, task_b) = candidate(&server, "edge-b").await;
    // Within a lease duration, exactly one leads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(*a.borrow() ^ *b.borrow()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody (or both) leads"
        );
        tokio::select! {
            _ = a.changed() => {}
            _ = b.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let a_leads = *a.borrow();
    let api: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease = api.get("portico-edge").await.expect("the Lease exists");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder.as_deref(),
        Some(if a_leads { "edge-a" } else { "edge-b" })
    );
    // Both stay as they are for a while: no flapping.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!((*a.borrow(), *b.borrow()), (a_leads, !a_leads));

    // The leader dies without releasing: the other takes over within the
    // lease duration and its grace.
    let (leader_task, mut follower) = if a_leads { (task_a, b) } else { (task_b, a) };
    leader_task.abort();
    let died = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !*follower.borrow() {
            follower
                .changed()
                .await
                .expect("the follower's elector runs");
        }
    })
    .await
    .expect("the follower takes over");
    let took = died.elapsed();
    eprintln!("takeover after {took:?}");
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} for a 3 s lease"
    );
}

#[tokio::test]
async fn a_lease_is_validated_as_the_real_server_does() {
    let server = FakeApiServer::start().await;
    let api: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let bad: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "x"},
        "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}
    }))
    .expect("lease");
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}");
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains(
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
        ),
        "{}",
        status.message
    );
}
