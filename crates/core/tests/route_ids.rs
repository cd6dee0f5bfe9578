//! Every committed route carries an id of its own, across threads and pipelines: the
//! quality stage keys its half-open probe by it.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use nexus_core::{analyzer::RequestAnalyzer, BackendSpec, Fleet, ModelSpec, Pipeline, Request};

fn pipeline() -> Pipeline {
    let fleet = Arc::new(
        Fleet::new(vec![
            BackendSpec::new("a", "http://127.0.0.1:1").with_model(ModelSpec::new("m"))
        ])
        .unwrap(),
    );
    Pipeline::builder(fleet)
        .stage(RequestAnalyzer)
        .build()
        .unwrap()
}

#[test]
fn route_ids_are_unique_and_never_zero() {
    let pipelines = [Arc::new(pipeline()), Arc::new(pipeline())];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pipeline = Arc::clone(&pipelines[t % 2]);
            std::thread::spawn(move || {
                (0..2_000)
                    .map(|_| {
                        let guard = pipeline.decide(&Request::new("m")).take_guard().unwrap();
                        let id = guard.ticket().id;
                        guard.cancel();
                        id
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert_ne!(id, 0);
            assert!(seen.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), 8_000);
}
