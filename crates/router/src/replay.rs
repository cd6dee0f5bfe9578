//! Replaying recorded outcomes into the quality stage (`nexus route --outcomes FILE`),
//! so that a dry run decides as the router would after that traffic.

use std::path::Path;

use crate::Router;

/// Why an outcomes file could not be replayed: what and where (`FILE:LINE:COLUMN` for a
/// bad line), and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReplayError {
    message: String,
}

impl ReplayError {
    fn new(message: String) -> Self {
        Self { message }
    }
}

/// One line of an outcomes file.
#[cfg(feature = "quality")]
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedOutcome {
    backend: String,
    success: bool,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    ttft_ms: Option<u64>,
    #[serde(default)]
    seconds_ago: u64,
}

impl Router {
    /// Feeds the outcomes recorded in the file at `path` to the quality stage, so that
    /// later decisions see that traffic. The file holds one JSON object a line,
    /// `{"backend": "id", "success": true, "latency_ms": 500, "ttft_ms": 120,
    /// "seconds_ago": 30}` (only `backend` and `success` required); blank lines and
    /// lines starting with `#` are skipped. Returns how many outcomes were recorded.
    ///
    /// Fails, recording the lines before the bad one, on a file that cannot be read, a
    /// line that is not such an object, an unknown backend, or a pipeline without the
    /// quality stage.
    pub fn replay_outcomes(&self, path: &Path) -> Result<usize, ReplayError> {
        replay(self, path)
    }
}

#[cfg(feature = "quality")]
fn replay(router: &Router, path: &Path) -> Result<usize, ReplayError> {
    use std::time::Duration;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ReplayError::new(format!(
            "{}: cannot read the outcomes file: {e}",
            path.display()
        ))
    })?;
    let Some(quality) = router
        .pipeline()
        .stage_of::<crate::quality::QualityReconciler>()
    else {
        return Err(ReplayError::new(format!(
            "{}: --outcomes needs the quality stage in the pipeline",
            path.display()
        )));
    };
    let tracker = quality.tracker();
    let now = tracker.now_secs();
    let mut recorded = 0;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let outcome: RecordedOutcome = serde_json::from_str(line).map_err(|e| {
            ReplayError::new(format!(
                "{}:{line_no}:{}: {e}; each line is {{\"backend\": \"id\", \"success\": true, \"latency_ms\": 500, \"ttft_ms\": 120, \"seconds_ago\": 30}}",
                path.display(),
                e.column()
            ))
        })?;
        let Some(backend) = router.fleet().backend_by_name(&outcome.backend) else {
            let known = router.fleet().backends().iter().map(|b| b.name());
            let hint = nexus_core::routes::closest(&outcome.backend, known)
                .map(|b| format!(" (did you mean '{b}'?)"))
                .unwrap_or_default();
            return Err(ReplayError::new(format!(
                "{}:{line_no}:1: unknown backend '{}'{hint}",
                path.display(),
                outcome.backend
            )));
        };
        tracker.record_at(
            backend.id(),
            now.saturating_sub(outcome.seconds_ago),
            outcome.success,
            Duration::from_millis(outcome.latency_ms),
            outcome.ttft_ms.map(Duration::from_millis),
        );
        recorded += 1;
    }
    Ok(recorded)
}

/// Without the quality feature there is no stage to replay into.
#[cfg(not(feature = "quality"))]
fn replay(_router: &Router, path: &Path) -> Result<usize, ReplayError> {
    Err(ReplayError::new(format!(
        "{}: --outcomes needs the quality stage, which this build does not include",
        path.display()
    )))
}
