//! `mqlink demo` with the embedded broker (the zero-install path the README
//! starts with): every region gets everything it wants, once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::time::Duration;

use mqlink::demo::{DemoOptions, run};
use mqlink::federation::BrokerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_embedded_brokers_delivers_everything_once() {
    let report = run(DemoOptions {
        regions: 3,
        duration: Some(Duration::from_secs(3)),
        broker: BrokerKind::Embedded,
    })
    .await
    .unwrap();
    assert_eq!(report.deliveries.len(), 3);
    for (region, (got, expected, duplicates)) in &report.deliveries {
        assert!(*expected > 0, "{region} wants something");
        assert_eq!(got, expected, "{region}");
        assert_eq!(*duplicates, 0, "{region}");
    }
    // The expensive ring link (ap-south <-> eu-west, cost 300) carries nothing:
    // eu-west and ap-south talk through us-east.
    let carried = |a: &str, b: &str| {
        report.carried[&(
            mqlink_topology::RegionName::new(a).unwrap(),
            mqlink_topology::RegionName::new(b).unwrap(),
        )]
    };
    assert_eq!(carried("eu-west", "ap-south"), 0);
    assert_eq!(carried("ap-south", "eu-west"), 0);
    assert!(carried("eu-west", "us-east") > 0 && carried("us-east", "ap-south") > 0);
}
