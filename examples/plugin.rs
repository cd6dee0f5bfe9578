//! Register a third-party stage kind and load a pipeline that names it from TOML.
//!
//! `cargo run -p nexus-examples --example plugin`

use nexus_core::Request;
use nexus_examples::MaintenanceWindow;
use nexus_router::{DecisionReport, RouterBuilder};

const CONFIG: &str = include_str!("plugin.toml");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = RouterBuilder::new()
        .with_reconciler("maintenance", MaintenanceWindow::factory)?
        .load_str("examples/plugin.toml", CONFIG)?;
    for warning in router.warnings() {
        eprintln!("{warning}");
    }
    let mut decision = router.route(&Request::new("llama3:70b").input_tokens(500));
    // Nothing is sent in this example: withdraw the route instead of leaving the guard
    // to be dropped, which would count as a failed request.
    if let Some(guard) = decision.take_guard() {
        guard.cancel();
    }
    print!("{}", DecisionReport::new("llama3:70b", &decision).to_text());
    Ok(())
}
