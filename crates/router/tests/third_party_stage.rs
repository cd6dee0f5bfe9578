//! A third-party stage registered with the builder and named in config.
#![allow(clippy::unwrap_used)]

mod common;

use common::{backend, fleet};
use nexus_core::{
    registry::{BuildContext, BuildError},
    stage::{ExplainContext, Explanation, Reason, ReconcileError},
    Reconciler, Request, RoutingIntent,
};
use nexus_router::RouterBuilder;
use serde::Deserialize;

/// Excludes backends whose URL is not on an allowed host.
#[derive(Debug)]
struct HostAllowList {
    hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    hosts: Vec<String>,
}

impl Reconciler for HostAllowList {
    fn name(&self) -> &'static str {
        "host-allow-list"
    }
    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let fleet = intent.fleet();
        for &(b, _) in intent.model_entry().offers() {
            let url = fleet.backend(b).url();
            if !self.hosts.iter().any(|h| url.contains(h.as_str())) {
                intent.exclude(b, Reason::new(1));
            }
        }
        Ok(())
    }
    fn explain(&self, _reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        let url = ctx
            .backend
            .map(|b| ctx.fleet.backend(b).url())
            .unwrap_or("?");
        Explanation::new(
            format!("host of {url} is not allowed"),
            "add the host to [routing.host-allow-list] hosts",
        )
    }
}

fn factory(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
    let settings: Settings = ctx.settings()?;
    Ok(Box::new(HostAllowList {
        hosts: settings.hosts,
    }))
}

fn config() -> String {
    fleet([
        backend("inside", "http://10.0.0.5:11434").serves("m"),
        backend("outside", "https://api.example.com")
            .priority(9)
            .serves("m"),
    ]) + r#"
[routing]
pipeline = ["analyzer", "host-allow-list", "scheduler"]

[routing.host-allow-list]
hosts = ["10.0.0.5"]
"#
}

#[test]
fn a_registered_kind_is_built_from_its_settings_and_explains_itself() {
    let router = RouterBuilder::new()
        .with_reconciler("host-allow-list", factory)
        .unwrap()
        .load_str("plugin.toml", &config())
        .unwrap();
    let decision = router.route(&Request::new("m"));
    assert_eq!(decision.backend().unwrap().name(), "inside");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reconciler, "host-allow-list");
    assert_eq!(
        rejections[0].reason,
        "host of https://api.example.com is not allowed"
    );
}

#[test]
fn a_kind_cannot_be_registered_twice() {
    let err = RouterBuilder::new()
        .with_reconciler("scheduler", factory)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "kind 'scheduler' is already registered; register yours under another kind"
    );
}

#[test]
fn without_registration_the_config_names_the_unknown_stage() {
    let err = RouterBuilder::new()
        .load_str("plugin.toml", &config())
        .unwrap_err();
    // The settings table is the first place the unknown kind appears.
    assert!(err.message.contains("host-allow-list"), "{err}");
    assert!(err.position.is_some());
}

#[test]
fn settings_errors_point_into_the_plugin_table() {
    let broken = config().replace("hosts = [", "hostz = [");
    let err = RouterBuilder::new()
        .with_reconciler("host-allow-list", factory)
        .unwrap()
        .load_str("plugin.toml", &broken)
        .unwrap_err();
    assert!(err.message.contains("unknown field `hostz`"), "{err}");
    assert_eq!(err.help.as_deref(), Some("did you mean `hosts`?"));
}
