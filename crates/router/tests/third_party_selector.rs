//! A third-party selector registered with the builder and named in config in place of
//! the scheduler: it picks among what the stages left, reads its own settings table, and
//! shares one namespace with the stages.
#![allow(clippy::unwrap_used)]

use nexus_core::{
    registry::{BuildContext, BuildError},
    selector::{Pick, Selector, Shortlist},
    Request,
};
use nexus_router::RouterBuilder;
use serde::Deserialize;

/// Routes to the named backend when it is a candidate, else to the first candidate.
#[derive(Debug)]
struct Pinned {
    backend: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    backend: String,
}

impl Selector for Pinned {
    fn name(&self) -> &'static str {
        "pinned"
    }
    fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
        let fleet = shortlist.fleet();
        let mut pinned = None;
        shortlist.each(|c| {
            if fleet.backend(c.backend).name() == self.backend {
                pinned = Some(c);
            }
            pinned.is_none()
        });
        pinned
            .or_else(|| shortlist.first())
            .map(|c| Pick::route(c, 1.0))
    }
}

fn factory(ctx: &BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError> {
    let settings: Settings = ctx.required_settings()?;
    Ok(Box::new(Pinned {
        backend: settings.backend,
    }))
}

const FLEET: &str = r#"
[[backends]]
id = "a"
url = "http://127.0.0.1:1"
priority = 9
models = [{ name = "m" }]

[[backends]]
id = "b"
url = "http://127.0.0.1:2"
models = [{ name = "m" }]

[[backends]]
id = "c"
url = "http://127.0.0.1:3"
status = "unhealthy"
models = [{ name = "m" }]
"#;

#[test]
fn a_registered_selector_picks_instead_of_the_scheduler() {
    let builder = RouterBuilder::new()
        .with_selector("pinned", factory)
        .unwrap();
    assert!(builder.registry().is_selector("pinned"));
    // Listed first: it still picks after the analyzer excluded the unhealthy "c".
    let config = format!(
        "{FLEET}\n[routing]\npipeline = [\"pinned\", \"analyzer\"]\n\n[routing.pinned]\nbackend = \"b\"\n"
    );
    let router = builder.load_str("pinned.toml", &config).unwrap();
    assert!(router.warnings().is_empty(), "{:?}", router.warnings());
    assert_eq!(router.pipeline().selector().name(), "pinned");
    let decision = router.route(&Request::new("m"));
    assert_eq!(decision.backend().map(|b| b.name()), Some("b"));

    let config = format!(
        "{FLEET}\n[routing]\npipeline = [\"pinned\", \"analyzer\"]\n\n[routing.pinned]\nbackend = \"c\"\n"
    );
    let router = builder.load_str("pinned.toml", &config).unwrap();
    let decision = router.route(&Request::new("m"));
    assert_eq!(
        decision.backend().map(|b| b.name()),
        Some("a"),
        "\"c\" is excluded, so the selector cannot pick it"
    );
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reconciler, "analyzer");
}

#[test]
fn a_selectors_settings_errors_point_at_its_table_and_its_kind_is_taken() {
    let builder = RouterBuilder::new()
        .with_selector("pinned", factory)
        .unwrap();
    let config = format!("{FLEET}\n[routing]\npipeline = [\"analyzer\", \"pinned\"]\n");
    let err = builder.load_str("pinned.toml", &config).unwrap_err();
    assert!(err.message.contains("[routing.pinned]"), "{err}");
    assert!(
        err.message.contains("needs settings, and they are missing"),
        "{err}"
    );

    // Stages and selectors share one namespace.
    let taken = RouterBuilder::new()
        .with_selector("analyzer", factory)
        .unwrap_err();
    assert_eq!(
        taken.to_string(),
        "kind 'analyzer' is already registered; register yours under another kind"
    );
    let taken = RouterBuilder::new()
        .with_selector("scheduler", factory)
        .unwrap_err();
    assert_eq!(taken.kind, "scheduler");
}
