//! `nexus serve` reloads its config on SIGHUP and when the file changes; a bad file
//! leaves the running config in place.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{start, terminate, wait_exit};
use nexus_testkit::{MockConfig, MockUpstream};

fn config(url: &str, model: &str) -> String {
    format!(
        "[[backends]]\nid = \"b\"\nurl = \"{url}\"\nzone = \"local\"\nmodels = [{{ name = \"{model}\" }}]\n[server]\nshutdown_grace_secs = 1\n[health]\ninterval_secs = 0\n"
    )
}

async fn models(client: &reqwest::Client, addr: &str) -> Vec<String> {
    let body: serde_json::Value = client
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls /v1/models (bounded: 15 s) until it is `want`.
async fn wait_for_models(client: &reqwest::Client, addr: &str, want: &[&str]) {
    for _ in 0..300 {
        if models(client, addr).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the models never became {want:?}: still {:?}",
        models(client, addr).await
    );
}

fn client() -> reqwest::Client {
    common::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

fn stop(mut child: std::process::Child) {
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_file_is_reloaded_and_a_bad_one_is_not() {
    let mock = MockUpstream::start(MockConfig::serving(["m1", "m2", "m3"]))
        .await
        .expect("a mock");
    let dir = temp_dir("reload-watch");
    let path = dir.join("nexus.toml");
    std::fs::write(&path, config(&mock.url(), "m1")).expect("written");
    let (child, addr) = start(&path);
    let client = client();
    assert_eq!(models(&client, &addr).await, ["m1"]);

    // Written in place.
    std::fs::write(&path, config(&mock.url(), "m2")).expect("written");
    wait_for_models(&client, &addr, &["m2"]).await;

    // A bad file: the running config stays (a later good one still loads).
    std::fs::write(&path, "[[backends]\n").expect("written");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(models(&client, &addr).await, ["m2"]);

    // Replaced by a rename, as editors and deploy tools do.
    let next = dir.join("nexus.toml.new");
    std::fs::write(&next, config(&mock.url(), "m3")).expect("written");
    std::fs::rename(&next, &path).expect("renamed");
    wait_for_models(&client, &addr, &["m3"]).await;
    let answer = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m3", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200);

    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let mock = MockUpstream::start(MockConfig::serving(["m1", "m2"]))
        .await
        .expect("a mock");
    // A mounted Kubernetes ConfigMap: nexus.toml -> ..data/nexus.toml, ..data -> ..v1.
    // An update writes ..v2 and renames a new ..data link over the old one; nothing
    // named nexus.toml changes in the folder.
    let dir = temp_dir("reload-config-map");
    for (version, model) in [("..v1", "m1"), ("..v2", "m2")] {
        std::fs::create_dir_all(dir.join(version)).expect("a folder");
        std::fs::write(
            dir.join(version).join("nexus.toml"),
            config(&mock.url(), model),
        )
        .expect("written");
    }
    symlink("..v1", dir.join("..data")).expect("a symlink");
    let path = dir.join("nexus.toml");
    symlink("..data/nexus.toml", &path).expect("a symlink");
    let (child, addr) = start(&path);
    let client = client();
    assert_eq!(models(&client, &addr).await, ["m1"]);

    symlink("..v2", dir.join("..data_tmp")).expect("a symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("renamed");
    wait_for_models(&client, &addr, &["m2"]).await;

    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let mock = MockUpstream::start(MockConfig::serving(["m1", "m2"]))
        .await
        .expect("a mock");
    let dir = temp_dir("reload-hup");
    // The config is a symlink into another folder: a change of the target is not seen
    // by the watch (it watches the link's folder), so only SIGHUP can load it.
    let target_dir = dir.join("real");
    std::fs::create_dir_all(&target_dir).expect("a folder");
    let target = target_dir.join("nexus.toml");
    std::fs::write(&target, config(&mock.url(), "m1")).expect("written");
    let path = dir.join("nexus.toml");
    std::os::unix::fs::symlink(&target, &path).expect("a symlink");
    let (child, addr) = start(&path);
    let client = client();
    assert_eq!(models(&client, &addr).await, ["m1"]);

    std::fs::write(&target, config(&mock.url(), "m2")).expect("written");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        models(&client, &addr).await,
        ["m1"],
        "no reload without the signal"
    );
    hangup(child.id());
    wait_for_models(&client, &addr, &["m2"]).await;

    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
