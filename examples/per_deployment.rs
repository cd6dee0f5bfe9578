//! Swap stages per deployment: the same fleet and the same pipeline type, with the
//! maintenance stage on for the production site and off (`None`) in the lab.
//!
//! `cargo run -p nexus-examples --example per_deployment -- lab` (or `prod`)

use std::sync::Arc;

use nexus_core::{
    analyzer::RequestAnalyzer, BackendSpec, Fleet, ModelSpec, Pipeline, Request, Zone,
};
use nexus_examples::MaintenanceWindow;
use nexus_scheduler::Scheduler;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let deployment = std::env::args().nth(1).unwrap_or_else(|| "prod".to_owned());
    let fleet = Arc::new(Fleet::new(vec![
        BackendSpec::new("rack-a", "http://10.0.0.10:8000")
            .with_zone(Zone::Private)
            .with_priority(3)
            .with_model(ModelSpec::new("qwen2:72b")),
        BackendSpec::new("rack-b", "http://10.0.0.11:8000")
            .with_zone(Zone::Private)
            .with_model(ModelSpec::new("qwen2:72b")),
    ])?);

    // Option<R> is a Reconciler: None is a stage that does nothing.
    let maintenance: Option<MaintenanceWindow> = match deployment.as_str() {
        "prod" => Some(MaintenanceWindow::new(
            &fleet,
            &["rack-a".to_owned()],
            0,
            24,
        )?),
        "lab" => None,
        other => return Err(format!("unknown deployment '{other}': use prod or lab").into()),
    };

    let pipeline = Pipeline::builder(Arc::clone(&fleet))
        .stage(RequestAnalyzer)
        .stage(maintenance)
        .selector(Scheduler::new())
        .build()?;
    // The stages in order, then the selector that picks among what they leave.
    let stages: Vec<&str> = pipeline
        .stages()
        .iter()
        .map(|s| s.reconciler().name())
        .chain([pipeline.selector().name()])
        .collect();
    let decision = pipeline.decide(&Request::new("qwen2:72b"));
    println!(
        "{deployment}: stages {} -> qwen2:72b on {}",
        stages.join(", "),
        decision.backend().map_or("-", |b| b.name())
    );
    Ok(())
}
