//! Fleets for benches and performance tests: generated configs of any size, shaped like
//! the deployments Nexus is measured against (DESIGN.md, issue "A decision in a
//! microsecond"): every backend serves the benched model, half of them are cloud APIs
//! with prices, a restricted policy with a tier floor applies to the alias (so the
//! privacy stage excludes the cloud half on every decision), and a budget is set.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt::Write as _;

/// The fleet sizes every bench runs at.
pub const SIZES: [usize; 3] = [10, 100, 1000];

/// The alias the benched requests ask for.
pub const REQUESTED: &str = "gpt-4";

/// The model every backend serves.
pub const MODEL: &str = "llama3:70b";

/// A config of `backends` backends that all serve [`MODEL`]: even ones local and free,
/// odd ones cloud and priced; priorities 1 to 3; an alias [`REQUESTED`] -> [`MODEL`]
/// a restricted policy with `min_tier = 2` on it, and a $100 000 monthly budget. The
/// pipeline is the default one.
pub fn fleet_config(backends: usize) -> String {
    let mut text = String::with_capacity(backends * 220);
    for i in 0..backends {
        let (zone, price) = if i % 2 == 0 {
            ("local", 0.0)
        } else {
            ("cloud", 0.9)
        };
        let _ = write!(
            text,
            "[[backends]]\nid = \"b{i}\"\nurl = \"http://127.0.0.1:{port}\"\nzone = \"{zone}\"\n\
             priority = {priority}\ntier = 3\nmax_concurrency = 32\n\
             [[backends.models]]\nname = \"{MODEL}\"\ncontext_window = 8192\ntools = true\n\
             input_usd_per_mtok = {price}\noutput_usd_per_mtok = {price}\n\n",
            port = 10_000 + i,
            priority = 1 + i % 3,
        );
    }
    let _ = write!(
        text,
        "[routing.aliases]\n\"{REQUESTED}\" = \"{MODEL}\"\n\n\
         [[routing.policies]]\nmodel_pattern = \"gpt-4*\"\nprivacy = \"restricted\"\nmin_tier = 2\n\n\
         [routing.budget]\nmonthly_limit_usd = 100000.0\n"
    );
    text
}

/// 10 priced cloud backends serving [`MODEL`] (nothing local, no policy), a $100 000
/// monthly limit, and `redis` appended (a `[routing.budget.redis]` table, or nothing):
/// the config of `pipeline/route_paid` and of the `shared_budget_loop` profile.
pub fn paid_fleet(redis: &str) -> String {
    let mut text = String::new();
    for i in 0..10 {
        let _ = write!(
            text,
            "[[backends]]\nid = \"c{i}\"\nurl = \"http://127.0.0.1:{}\"\nzone = \"cloud\"\nmax_concurrency = 32\n\
             models = [{{ name = \"{MODEL}\", context_window = 8192, input_usd_per_mtok = 0.9, output_usd_per_mtok = 0.9 }}]\n\n",
            10_000 + i
        );
    }
    text.push_str("[routing.budget]\nmonthly_limit_usd = 100000.0\n");
    text.push_str(redis);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_loads_with_every_backend_serving_the_model() {
        let router = nexus_router::Router::from_toml("bench.toml", &fleet_config(10)).unwrap();
        let fleet = router.fleet();
        assert_eq!(fleet.len(), 10);
        let model = fleet.model_id(MODEL).unwrap();
        assert_eq!(fleet.model(model).servers().len(), 10);
    }
}
