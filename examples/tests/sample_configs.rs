//! The sample configs in examples/ load, and route the way their comments say.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use nexus_core::Request;
use nexus_examples::MaintenanceWindow;
use nexus_router::{Router, RouterBuilder};

fn sample(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn every_sample_config_loads_without_warnings() {
    let builder = RouterBuilder::new()
        .with_reconciler("maintenance", MaintenanceWindow::factory)
        .unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(env!("CARGO_MANIFEST_DIR")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml")
            && path.file_name() != Some("Cargo.toml".as_ref())
        {
            let router = builder.load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                router.warnings().is_empty(),
                "{}: {:?}",
                path.display(),
                router.warnings()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "homelab.toml, hybrid.toml and plugin.toml");
}

#[test]
fn homelab_chat_falls_back_to_the_mini_pc_when_the_desktop_is_down() {
    let router = Router::from_file(sample("homelab.toml")).unwrap();
    assert_eq!(
        router
            .route(&Request::new("chat"))
            .backend()
            .unwrap()
            .name(),
        "desktop-gpu"
    );
    let desktop = router.fleet().backend_by_name("desktop-gpu").unwrap().id();
    router
        .fleet()
        .set_status(desktop, nexus_core::fleet::BackendStatus::Unhealthy);
    let decision = router.route(&Request::new("chat"));
    assert_eq!(decision.backend().unwrap().name(), "mini-pc");
    assert!(decision.fallback_used());
}

#[test]
fn the_plugin_config_keeps_traffic_off_the_backend_in_maintenance() {
    let router = RouterBuilder::new()
        .with_reconciler("maintenance", MaintenanceWindow::factory)
        .unwrap()
        .load_file(sample("plugin.toml"))
        .unwrap();
    let decision = router.route(&Request::new("llama3:70b"));
    assert_eq!(decision.backend().unwrap().name(), "workstation");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reconciler, "maintenance");
    assert!(rejections[0]
        .reason
        .starts_with("in its maintenance window (00:00-24:00 UTC)"));
}

#[test]
fn a_typo_in_the_plugin_settings_names_the_backend() {
    let text = std::fs::read_to_string(sample("plugin.toml"))
        .unwrap()
        .replace("backends = [\"gpu-box\"]", "backends = [\"gpu-bx\"]");
    let err = RouterBuilder::new()
        .with_reconciler("maintenance", MaintenanceWindow::factory)
        .unwrap()
        .load_str("plugin.toml", &text)
        .unwrap_err();
    assert!(
        err.message
            .contains("backend 'gpu-bx' is not in the fleet (did you mean 'gpu-box'?)"),
        "{err}"
    );
}
