//! A third-party stage for the examples: [`MaintenanceWindow`] keeps traffic off
//! backends during their maintenance hours.
//!
//! It is written exactly as an out-of-tree crate would write one: it depends on
//! `nexus-core` only, implements [`Reconciler`], renders its own reasons, reads time
//! from the decision ([`RoutingIntent::now_secs`], the pipeline's clock), and has a factory ([`MaintenanceWindow::factory`])
//! that config can name once it is registered.
//!
//! Run the examples with `cargo run -p nexus-examples --example compose` (or `plugin`,
//! `per_deployment`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use nexus_core::{
    fleet::BackendSet,
    registry::{BuildContext, BuildError},
    stage::{ExplainContext, Explanation, Reason, ReconcileError, StageReason},
    Fleet, Reconciler, RoutingIntent,
};
use serde::Deserialize;

/// Why the stage excluded a backend: typed here, compact ([`Reason`]) in the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaintenanceReason {
    /// The backend is in its maintenance window.
    InWindow {
        /// First hour (UTC) of the window.
        start_hour: u8,
        /// Hour (UTC) the window ends.
        end_hour: u8,
    },
}

/// Compact code of [`MaintenanceReason::InWindow`]: `values = [start, end, 0]`.
const IN_MAINTENANCE: u16 = 1;

impl From<MaintenanceReason> for Reason {
    fn from(reason: MaintenanceReason) -> Reason {
        match reason {
            MaintenanceReason::InWindow {
                start_hour,
                end_hour,
            } => Reason::with(
                IN_MAINTENANCE,
                [f64::from(start_hour), f64::from(end_hour), 0.0],
            ),
        }
    }
}

impl StageReason for MaintenanceReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [start, end, _] = reason.values();
        (reason.code() == IN_MAINTENANCE).then_some(MaintenanceReason::InWindow {
            start_hour: start as u8,
            end_hour: end as u8,
        })
    }
}

/// The `[routing.maintenance]` settings (required: the stage has nothing to do
/// without them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Ids of the backends that go down for maintenance.
    pub backends: Vec<String>,
    /// First hour (UTC, 0-23) of the window.
    pub start_hour_utc: u8,
    /// Hour (UTC, 0-24) the window ends; a window may wrap past midnight.
    pub end_hour_utc: u8,
}

/// Excludes the configured backends while the UTC hour is inside the window.
#[derive(Debug)]
pub struct MaintenanceWindow {
    backends: BackendSet,
    start_hour: u8,
    end_hour: u8,
}

impl MaintenanceWindow {
    /// A window over `backends` (ids in `fleet`) from `start_hour` to `end_hour` UTC.
    pub fn new(
        fleet: &Fleet,
        backends: &[String],
        start_hour: u8,
        end_hour: u8,
    ) -> Result<Self, String> {
        if start_hour > 23 || end_hour > 24 {
            return Err(format!(
                "hours are 0 to 23 (start) and 0 to 24 (end), got {start_hour} to {end_hour}"
            ));
        }
        let mut set = BackendSet::with_capacity(fleet.len());
        for id in backends {
            let backend = fleet.backend_by_name(id).ok_or_else(|| {
                let hint =
                    nexus_core::routes::closest(id, fleet.backends().iter().map(|b| b.name()))
                        .map(|b| format!(" (did you mean '{b}'?)"))
                        .unwrap_or_default();
                format!("backend '{id}' is not in the fleet{hint}")
            })?;
            set.insert(backend.id());
        }
        Ok(Self {
            backends: set,
            start_hour,
            end_hour,
        })
    }

    /// The factory to register under a kind name, e.g. `"maintenance"`.
    pub fn factory(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        let settings: MaintenanceSettings = ctx.required_settings()?;
        Self::new(
            ctx.fleet,
            &settings.backends,
            settings.start_hour_utc,
            settings.end_hour_utc,
        )
        .map(|stage| Box::new(stage) as Box<dyn Reconciler>)
        .map_err(|message| ctx.invalid(message))
    }

    /// Whether `now_secs` (seconds since the Unix epoch) is inside the window.
    fn in_window(&self, now_secs: u64) -> bool {
        let hour = ((now_secs / 3600) % 24) as u8;
        if self.start_hour <= self.end_hour {
            (self.start_hour..self.end_hour).contains(&hour)
        } else {
            hour >= self.start_hour || hour < self.end_hour
        }
    }
}

impl Reconciler for MaintenanceWindow {
    fn name(&self) -> &'static str {
        "maintenance"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        if !self.in_window(intent.now_secs()) {
            return Ok(());
        }
        let reason = MaintenanceReason::InWindow {
            start_hour: self.start_hour,
            end_hour: self.end_hour,
        }
        .into();
        for backend in self.backends.iter() {
            intent.exclude(backend, reason);
        }
        Ok(())
    }

    fn explain(&self, reason: &Reason, _ctx: &ExplainContext<'_>) -> Explanation {
        match MaintenanceReason::from_reason(*reason) {
            Some(MaintenanceReason::InWindow {
                start_hour,
                end_hour,
            }) => Explanation::new(
                format!("in its maintenance window ({start_hour:02}:00-{end_hour:02}:00 UTC)"),
                "wait for the window to end, or remove the backend from [routing.maintenance] backends",
            ),
            None => Explanation::new(
                format!("excluded by maintenance (code {})", reason.code()),
                "see the stage's documentation",
            ),
        }
    }
}
