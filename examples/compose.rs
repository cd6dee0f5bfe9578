//! Compose a pipeline in code from nexus-core, nexus-scheduler and a custom stage;
//! no facade, no config file.
//!
//! `cargo run -p nexus-examples --example compose`

use std::sync::Arc;
use std::time::Duration;

use nexus_core::{
    analyzer::RequestAnalyzer, clock::FakeClock, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline,
    Request, RoutingDecision, Zone,
};
use nexus_examples::MaintenanceWindow;
use nexus_scheduler::Scheduler;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fleet = Arc::new(Fleet::new(vec![
        BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
            .with_zone(Zone::Local)
            .with_priority(2)
            .with_model(ModelSpec::new("llama3:70b").with_tier(3)),
        BackendSpec::new("workstation", "http://127.0.0.1:8000")
            .with_zone(Zone::Local)
            .with_model(ModelSpec::new("llama3:70b").with_tier(3)),
    ])?);

    // gpu-box's maintenance window is 02:00-04:00 UTC. The stage reads the decision's
    // time, which is the pipeline's clock: one clock, set below to 02:30 and 05:30.
    let clock = Arc::new(FakeClock::at_secs(2 * 3600 + 1800));
    let maintenance = MaintenanceWindow::new(&fleet, &["gpu-box".to_owned()], 2, 4)?;

    let pipeline = Pipeline::builder(Arc::clone(&fleet))
        .clock(clock.clone())
        .alias("gpt-4", "llama3:70b")
        .stage(RequestAnalyzer)
        .stage(maintenance)
        .selector(Scheduler::new())
        .build()?;

    for hour in [2, 5] {
        clock.set_secs(hour * 3600 + 1800);
        let mut decision = pipeline.decide(&Request::new("gpt-4").input_tokens(800));
        if let RoutingDecision::Route { reason, .. } = decision.kind() {
            println!(
                "{hour:02}:30 UTC: gpt-4 -> {} ({reason})",
                decision.backend().map_or("-", |b| b.name())
            );
        }
        for rejection in decision.rejections() {
            println!(
                "  excluded {} by {}: {}",
                rejection.backend, rejection.reconciler, rejection.reason
            );
        }
        if let Some(guard) = decision.take_guard() {
            // ... send the request to guard.backend().url(), then:
            guard.finish(Outcome::success(Duration::from_millis(640)).usage(800, 212));
        }
    }
    Ok(())
}
