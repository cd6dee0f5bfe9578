//! Invalid configs fail at load, naming FILE:LINE:COLUMN, what is wrong and the fix.
#![allow(clippy::unwrap_used)]

use nexus_router::{ConfigError, Router};

const BACKENDS: &str = r#"[[backends]]
id = "gpu"
url = "http://127.0.0.1:11434"
zone = "local"
  [[backends.models]]
  name = "llama3:70b"
  [[backends.models]]
  name = "mistral:7b"
"#;

fn load(extra: &str) -> Result<Router, ConfigError> {
    Router::from_toml("nexus.toml", &format!("{BACKENDS}{extra}"))
}

/// The 1-based line of the first line of `extra` containing `needle`.
fn line_of(extra: &str, needle: &str) -> usize {
    let offset = BACKENDS.lines().count();
    offset + 1 + extra.lines().position(|l| l.contains(needle)).unwrap()
}

#[test]
fn an_alias_chain_of_three_names_resolves() {
    let router =
        load("[routing.aliases]\n\"gpt-4\" = \"big\"\n\"big\" = \"llama3:70b\"\n").unwrap();
    let decision = router.route(&nexus_core::Request::new("gpt-4"));
    assert_eq!(decision.model(), Some("llama3:70b"));
    assert_eq!(decision.alias_chain(), ["gpt-4", "big", "llama3:70b"]);
}

#[test]
fn an_alias_chain_of_four_names_fails_at_load() {
    let extra = "[routing.aliases]\n\"a\" = \"b\"\n\"b\" = \"c\"\n\"c\" = \"llama3:70b\"\n";
    let err = load(extra).unwrap_err();
    assert_eq!(err.position, Some((line_of(extra, "\"a\""), 1)));
    assert!(
        err.message
            .contains("a -> b -> c -> llama3:70b has 4 names"),
        "{err}"
    );
}

#[test]
fn an_alias_cycle_fails_at_load() {
    let extra = "[routing.aliases]\n\"x\" = \"y\"\n\"y\" = \"x\"\n";
    let err = load(extra).unwrap_err();
    assert!(err.message.contains("cycle: x -> y -> x"), "{err}");
    assert_eq!(err.position.map(|p| p.0), Some(line_of(extra, "\"x\" =")));
}

#[test]
fn unknown_keys_fail_with_their_line_and_a_suggestion() {
    let extra = "[routing]\npipelin = [\"analyzer\"]\n";
    let err = load(extra).unwrap_err();
    assert_eq!(err.position, Some((line_of(extra, "pipelin"), 1)));
    assert_eq!(err.help.as_deref(), Some("did you mean `pipeline`?"));
    let rendered = err.to_string();
    assert!(
        rendered.starts_with(&format!(
            "nexus.toml:{}:1: unknown key `pipelin`",
            line_of(extra, "pipelin")
        )),
        "{rendered}"
    );

    let err = Router::from_toml(
        "nexus.toml",
        "[[backends]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\npriorty = 2\n",
    )
    .unwrap_err();
    assert_eq!(err.position, Some((4, 1)));
    assert_eq!(err.help.as_deref(), Some("did you mean `priority`?"));
}

#[test]
fn an_invalid_glob_names_the_policy_index() {
    let extra = "[[routing.policies]]\nmodel_pattern = \"llama*\"\n\n[[routing.policies]]\nmodel_pattern = \"gpt-[4\"\n";
    let err = load(extra).unwrap_err();
    assert!(
        err.message
            .starts_with("policy 1: model_pattern 'gpt-[4' is not a valid glob"),
        "{err}"
    );
    assert_eq!(err.position.map(|p| p.0), Some(line_of(extra, "gpt-[4")));
}

#[test]
fn unknown_stages_suggest_the_closest_kind() {
    let extra = "[routing]\npipeline = [\"analyzer\", \"shceduler\"]\n";
    let err = load(extra).unwrap_err();
    assert_eq!(err.message, "unknown stage 'shceduler' in the pipeline");
    assert_eq!(err.help.as_deref(), Some("did you mean `scheduler`?"));
    assert_eq!(err.position, Some((line_of(extra, "shceduler"), 25)));
}

#[test]
fn typos_in_zones_and_fallbacks_are_errors_not_silent_changes() {
    let err = Router::from_toml(
        "z.toml",
        "[[backends]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\nzone = \"loacl\"\n",
    )
    .unwrap_err();
    assert_eq!(err.help.as_deref(), Some("did you mean `local`?"));

    let extra = "[routing.fallbacks]\n\"llama3:70b\" = [\"mistral:7\"]\n";
    let err = load(extra).unwrap_err();
    assert!(err.message.contains("fallback 'mistral:7' of 'llama3:70b' is not served by any backend (did you mean 'mistral:7b'?)"), "{err}");
}

#[test]
fn bad_backend_values_name_the_backend_and_key() {
    let text =
        format!("{BACKENDS}\n[[backends]]\nid = \"second\"\nurl = \"http://127.0.0.1:1\"\nmax_concurrency = 0\n");
    let err = Router::from_toml("b.toml", &text).unwrap_err();
    assert!(
        err.message
            .contains("backend 'second': max_concurrency must be greater than 0"),
        "{err}"
    );
    assert_eq!(
        err.position.map(|p| p.0),
        Some(
            text.lines()
                .position(|l| l.starts_with("max_concurrency"))
                .unwrap()
                + 1
        )
    );
}

#[test]
fn shadowed_policies_are_warnings_and_the_selector_may_be_listed_anywhere() {
    // The scheduler is the pipeline's selector: it picks after every stage ran, wherever
    // the pipeline lists it, so listing it first is no longer worth a warning.
    let extra = "[routing]\npipeline = [\"scheduler\", \"analyzer\"]\n\n[[routing.policies]]\nmodel_pattern = \"*\"\n\n[[routing.policies]]\nmodel_pattern = \"gpt-4\"\n";
    let router = load(extra).unwrap();
    let warnings: Vec<String> = router.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("policy 1 ('gpt-4') never matches: policy 0 ('*')"),
        "{warnings:#?}"
    );
    assert!(
        warnings[0].starts_with(&format!("nexus.toml:{}:", line_of(extra, "\"gpt-4\""))),
        "{warnings:#?}"
    );
    assert_eq!(router.pipeline().selector().name(), "scheduler");
    let stages: Vec<&str> = router
        .pipeline()
        .stages()
        .iter()
        .map(|s| s.reconciler().name())
        .collect();
    assert_eq!(stages, ["analyzer"]);
}

#[test]
fn a_pipeline_without_a_selector_is_a_warning() {
    let extra = "[routing]\npipeline = [\"analyzer\", \"quality\"]\n";
    let router = load(extra).unwrap();
    let warnings: Vec<String> = router.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("the pipeline lists no selector"),
        "{warnings:#?}"
    );
    assert_eq!(router.pipeline().selector().name(), "heaviest");
}

#[test]
fn two_selectors_are_an_error_at_the_second() {
    let extra = "[routing]\npipeline = [\"analyzer\", \"scheduler\", \"picky\"]\n";
    let text = format!("{BACKENDS}{extra}");
    let err = nexus_router::RouterBuilder::new()
        .with_selector("picky", |_: &nexus_core::registry::BuildContext<'_>| {
            Ok(Box::new(nexus_core::selector::HeaviestCandidate)
                as Box<dyn nexus_core::selector::Selector>)
        })
        .unwrap()
        .load_str("nexus.toml", &text)
        .unwrap_err();
    assert_eq!(
        err.message,
        "the pipeline lists two selectors, 'scheduler' and 'picky': one selector picks the backend"
    );
    assert_eq!(
        err.help.as_deref(),
        Some("keep one of 'scheduler' and 'picky'")
    );
    let (line, column) = err.position.expect("a position");
    assert_eq!(line, line_of(extra, "pipeline ="));
    assert_eq!(
        column,
        extra.find("\"picky\"").unwrap() - "[routing]\n".len() + 1
    );
}

#[test]
fn an_error_policy_for_the_selector_is_a_warning() {
    let extra = "[routing.on_error]\nscheduler = \"fail_open\"\n";
    let router = load(extra).unwrap();
    let warnings: Vec<String> = router.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("'scheduler' is the pipeline's selector, which picks and cannot fail"),
        "{warnings:#?}"
    );
    assert!(
        warnings[0].starts_with(&format!("nexus.toml:{}:", line_of(extra, "scheduler ="))),
        "{warnings:#?}"
    );
}

#[test]
fn the_same_stage_twice_and_unknown_error_policies_fail() {
    let err = load("[routing]\npipeline = [\"analyzer\", \"analyzer\"]\n").unwrap_err();
    assert!(err.message.contains("appears twice"), "{err}");
    let err = load("[routing]\npipeline = [\"analyzer\", \"scheduler\"]\n[routing.on_error]\nschedulr = \"fail_open\"\n").unwrap_err();
    assert_eq!(err.help.as_deref(), Some("did you mean `scheduler`?"));
}

#[test]
fn stage_settings_are_validated_by_the_stage() {
    let extra = "[routing.scheduler]\ndefault_latency_ms = 50.0\nload_wait = 100\n";
    let err = load(extra).unwrap_err();
    assert!(err.message.contains("unknown field `load_wait`"), "{err}");
    assert_eq!(err.help.as_deref(), Some("did you mean `load_wait_ms`?"));
    assert_eq!(err.position, Some((line_of(extra, "load_wait ="), 1)));
}

#[test]
fn empty_fleets_and_idle_backends_are_warnings() {
    let router = Router::from_toml("empty.toml", "").unwrap();
    assert_eq!(router.warnings().len(), 1);
    assert!(router.warnings()[0]
        .to_string()
        .starts_with("empty.toml: warning: no [[backends]]"));

    let router = Router::from_toml(
        "idle.toml",
        &format!("{BACKENDS}\n[[backends]]\nid = \"idle\"\nurl = \"http://127.0.0.1:1\"\n"),
    )
    .unwrap();
    let warnings: Vec<String> = router.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("backend 'idle' serves no models"),
        "{warnings:?}"
    );
    assert!(warnings[0].starts_with("idle.toml:10:"), "{warnings:?}");
}

#[test]
fn on_error_sets_a_stages_error_policy() {
    let router =
        load("[routing.on_error]\nquality = \"fail_closed\"\nprivacy = \"fail_open\"\n").unwrap();
    let policies: Vec<(&str, &str)> = router
        .pipeline()
        .stages()
        .iter()
        .map(|s| (s.reconciler().name(), s.error_policy().as_str()))
        .collect();
    assert!(
        policies.contains(&("quality", "fail_closed")),
        "{policies:?}"
    );
    assert!(policies.contains(&("privacy", "fail_open")), "{policies:?}");
    assert!(
        policies.contains(&("analyzer", "fail_closed")),
        "defaults stay: {policies:?}"
    );

    let err = load("[routing.on_error]\nquality = \"fail_later\"\n").unwrap_err();
    assert!(
        err.message.contains("unknown variant `fail_later`"),
        "{err}"
    );
    assert_eq!(
        err.help.as_deref(),
        Some("use one of `fail_open`, `fail_closed`")
    );
}

/// One malformed config: what is appended to `BACKENDS`, the text of the line the
/// error must point at, and what its message and help must say.
struct Malformed {
    extra: &'static str,
    line_with: &'static str,
    message: &'static str,
    help: &'static str,
}

/// Issue 13, items 3, 15 and 16: each of these loaded silently, or failed without
/// naming the key, or pointed at the wrong line.
const MALFORMED: &[Malformed] = &[
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"\"\n",
        line_with: "url = \"\"",
        message: "backend 'x': url '' is empty",
        help: "url = \"http://127.0.0.1:11434\"",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"not a url at all\"\n",
        line_with: "not a url",
        message: "backend 'x': url 'not a url at all' is not an http or https URL",
        help: "e.g. url =",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"localhost:11434\"\n",
        line_with: "localhost",
        message: "did you mean 'http://localhost:11434'?",
        help: "e.g. url =",
    },
    Malformed {
        extra: "[routing.aliases]\n\"\" = \"llama3:70b\"\n",
        line_with: "\"\" =",
        message: "alias name '' is empty",
        help: "name the alias",
    },
    Malformed {
        extra: "[[routing.policies]]\nmodel_pattern = \"\"\nprivacy = \"restricted\"\n",
        line_with: "model_pattern",
        message: "policy 0: model_pattern '' is empty, so it matches no request",
        help: "\"*\" matches every name",
    },
    Malformed {
        extra: "[routing.fallbacks]\n\"llama3:70b\" = [\"llama3:70b\"]\n",
        line_with: "\"llama3:70b\" =",
        message: "'llama3:70b' lists 'llama3:70b' as a fallback, which is itself",
        help: "",
    },
    Malformed {
        extra: "[routing.fallbacks]\n\"llama3:70b\" = [\"mistral:7b\", \"mistral:7b\"]\n",
        line_with: "\"llama3:70b\" =",
        message: "fallback 'mistral:7b' of 'llama3:70b' is listed twice",
        help: "",
    },
    Malformed {
        extra: "[routing.fallbacks]\n\"llama3:70b\" = []\n",
        line_with: "\"llama3:70b\" =",
        message: "the fallbacks of 'llama3:70b' are an empty list",
        help: "",
    },
    Malformed {
        extra: "[[backends]]\nid = \"evil\\u001b[2J\"\nurl = \"http://127.0.0.1:1\"\n",
        line_with: "evil",
        message: "backend 1: id 'evil\u{1b}[2J' contains a control character",
        help: "use letters",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"http://127.0.0.1:1\"\nmodels = [{ name = \"m\\u0007\" }]\n",
        line_with: "models =",
        message: "backend 'x': model name 'm\u{7}' contains a control character",
        help: "name = \"llama3:70b\"",
    },
    Malformed {
        extra: "[routing.aliases]\n\"\\u001b]0;pwned\\u0007\" = \"llama3:70b\"\n",
        line_with: "pwned",
        message: "contains a control character",
        help: "",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"http://127.0.0.1:1\"\npriority = \"high\"\n",
        line_with: "priority",
        message: "backends[1].priority: expected a whole number from 0 to 4294967295, found string \"high\"",
        help: "priority takes a whole number from 0 to 4294967295, e.g. priority = 8",
    },
    Malformed {
        extra: "[[routing.policies]]\nmodel_pattern = \"gpt-4\"\nmin_tier = 300\n",
        line_with: "min_tier",
        message: "routing.policies[0].min_tier: expected a whole number from 0 to 255, found integer `300`",
        help: "min_tier takes a whole number from 0 to 255",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nurl = \"http://127.0.0.1:1\"\nzone = 3\n",
        line_with: "zone",
        message: "backends[1].zone: expected one of its names in quotes",
        help: "zone takes a string in quotes",
    },
    Malformed {
        extra: "[[backends]]\nid = x\n",
        line_with: "id = x",
        message: "invalid string, expected `\"`, `'`",
        help: "put the value in double quotes",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\nurl = \"http://127.0.0.1:1\"\n",
        line_with: "id = ",
        message: "invalid basic string",
        help: "end the string with a double quote",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\nid = \"y\"\n",
        line_with: "id = \"y\"",
        message: "duplicate key `id`",
        help: "a key may appear once in a table",
    },
    Malformed {
        extra: "[[backends]]\nid = \"x\"\n",
        line_with: "[[backends]]",
        message: "missing field `url`",
        help: "add `url = ...` to this table",
    },
    Malformed {
        extra: "[routing.scheduler]\ndefault_latency_ms = 50.0\nload_wait_ms = \"soon\"\n",
        line_with: "load_wait_ms",
        message: "[routing.scheduler]: load_wait_ms: expected a whole number of 0 or more, found string \"soon\"",
        help: "load_wait_ms takes a whole number of 0 or more, e.g. load_wait_ms = 60",
    },
    Malformed {
        extra: "[routing.budget]\nmonthly_limit_usd = 10.0\nhard_limit_action = \"blok_cloud\"\n",
        line_with: "hard_limit_action",
        message: "[routing.budget]: hard_limit_action: unknown variant `blok_cloud`",
        help: "did you mean `block_cloud`?",
    },
    Malformed {
        extra: "[routing]\npipeline = [\"analyzer\", \"tier\", \"scheduler\"]\n\n[[routing.policies]]\nmodel_pattern = \"gpt-4\"\nprivacy = \"restricted\"\n",
        line_with: "privacy =",
        message: "policy 0 ('gpt-4'): privacy = \"restricted\" needs the 'privacy' stage",
        help: "add \"privacy\" to [routing] pipeline, or remove privacy",
    },
    Malformed {
        extra: "[routing]\npipeline = [\"analyzer\", \"scheduler\"]\n\n[routing.quality]\nmin_samples = 5\n",
        line_with: "[routing.quality]",
        message: "[routing.quality] configures the 'quality' stage, which the pipeline leaves out",
        help: "add \"quality\" to [routing] pipeline, or remove the table",
    },
];

#[test]
fn every_malformed_config_fails_at_its_line_with_a_fix() {
    for case in MALFORMED {
        let err = load(case.extra).map(|_| ()).unwrap_err();
        assert_eq!(
            err.position.map(|p| p.0),
            Some(line_of(case.extra, case.line_with)),
            "{err}"
        );
        assert!(err.message.contains(case.message), "{err}");
        let help = err.help.clone().unwrap_or_default();
        assert!(!help.is_empty() && help.contains(case.help), "{err}");
        let rendered = err.to_string();
        assert!(
            !rendered.chars().any(|c| c.is_control() && c != '\n'),
            "control characters are escaped when printed: {rendered:?}"
        );
    }
}

#[test]
fn every_malformed_config_makes_nexus_check_exit_2_at_its_line() {
    let dir = std::env::temp_dir().join(format!("nexus-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, case) in MALFORMED.iter().enumerate() {
        let path = dir.join(format!("case{i}.toml"));
        std::fs::write(&path, format!("{BACKENDS}{}", case.extra)).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let line = line_of(case.extra, case.line_with);
        assert!(
            stderr.starts_with(&format!("{}:{line}:", path.display())),
            "{stderr}"
        );
        assert!(stderr.contains("\n  help: "), "{stderr}");
        assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
        assert!(output.stdout.is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
