//! The verify window is the agent's to keep: a release that crashes after
//! its cutover is sent back by the agent even when the CLI that deployed it
//! was killed inside the window, and by a restarted agent when the agent
//! itself was killed inside it; a newer deploy, or a stop, ends the window.

mod agent_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gantry_testkit::{TestProject, wait_for};
use serde_json::Value;

use agent_support::{
    alive, assert_failed_its_window, assert_web_answers, command, deploy, hello, hello_toml, json,
    listed_release, service, status, wait_for_status,
};

/// The verify window of these tests.
const WINDOW: Duration = Duration::from_secs(8);

/// `p` at its second version, whose web instances answer until `crash`
/// exists, then exit; watched for [`WINDOW`] after its cutover. The crash
/// comes when the test says, not after a delay a slow machine could
/// stretch past the moment the test kills something.
fn crashing_second_version(p: TestProject, name: &str, crash: &Path) -> TestProject {
    let crashing = format!(
        "#!/bin/sh
bin/hello-web & web=$!
while [ ! -e '{}' ]; do sleep 0.1; done
kill $web
exit 1
",
        crash.display()
    );
    let toml = hello_toml(name, "bin/crashing-web").replace(
        "verify = \"0s\"",
        &format!("verify = \"{}s\"", WINDOW.as_secs()),
    );
    let p = p
        .file("bin/crashing-web", &crashing)
        .file("VERSION", "2\n")
        .file("gantry.toml", &toml);
    let path = p.path().join("bin/crashing-web");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    p
}

/// Where a test's crashing release looks for the word to crash: outside
/// the project, where a service running as a user of its own sees it too.
struct CrashSwitch(PathBuf);

impl CrashSwitch {
    fn new(name: &str) -> CrashSwitch {
        let path = std::env::temp_dir().join(format!("gantry-{name}-crash-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        CrashSwitch(path)
    }

    fn flip(&self) {
        std::fs::write(&self.0, "now\n").expect("write the crash switch");
    }
}

impl Drop for CrashSwitch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `gantry deploy` left running, once it says the new release is watched
/// (the cutover is done); when it said so.
fn deploy_until_watched(p: &TestProject) -> (Child, Instant) {
    let mut cli = command(p, &["deploy", "--skip-build", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the deploy");
    let stderr = cli.stderr.take().expect("piped stderr");
    let (tx, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let watched = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            // Whoever watches: the cutover is done.
            Ok(line) if line.contains("watches r2") || line.contains("watching r2") => {
                break Some(Instant::now());
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    match watched {
        Some(at) => (cli, at),
        None => {
            sigkill(cli);
            panic!("the deploy did not say r2 is watched");
        }
    }
}

/// Waits until web runs a release other than `r2`, all its instances live
/// and healthy; that status.
fn back_from_r2(p: &TestProject) -> Value {
    wait_for_status(p, "web to run an earlier version again", |status| {
        let web = service(status, "web");
        web["state"] == "running"
            && web["release"] != "r2"
            && web["instances"]
                .as_array()
                .is_some_and(|i| i.iter().all(|i| i["healthy"] == true))
    })
}

/// The hello project `name` at its first version, then a deploy of its
/// crashing second version left running until the agent watches it (the
/// cutover is done), with the switch that crashes it and when the deploy
/// said so.
fn crashing_deploy_watched(name: &str) -> (TestProject, CrashSwitch, Child, Instant) {
    let crash = CrashSwitch::new(name);
    let p = hello(name, "1");
    deploy(&p);
    let p = crashing_second_version(p, name, &crash.0);
    let (cli, watched) = deploy_until_watched(&p);
    (p, crash, cli, watched)
}

fn sigkill(mut cli: Child) {
    cli.kill().expect("SIGKILL the deploy");
    cli.wait().expect("reap the deploy");
}

#[test]
fn the_agent_goes_back_from_a_release_that_crashes_in_its_window_after_the_cli_was_killed() {
    let (p, crash, cli, watched) = crashing_deploy_watched("verify-cli-killed");
    // Not waits for a condition: the moments are the point. The CLI dies a
    // second into the window, and the release crashes a second later.
    std::thread::sleep(Duration::from_secs(1));
    sigkill(cli);
    std::thread::sleep(Duration::from_secs(1));
    crash.flip();

    let status = back_from_r2(&p);
    assert!(
        watched.elapsed() < WINDOW,
        "the first version serves again within the window ({:?} after the cutover)",
        watched.elapsed()
    );
    assert_web_answers(service(&status, "web"), "1");
    assert_failed_its_window(&p, "r2");
}

#[test]
fn an_agent_killed_inside_the_window_is_restarted_and_still_goes_back() {
    let (p, crash, cli, _) = crashing_deploy_watched("verify-agent-killed");
    sigkill(cli);
    let agent = agent_pid(&p).expect("the agent runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &agent.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {agent}");
    wait_for(
        "the killed agent to be gone",
        Duration::from_secs(10),
        || !alive(agent),
    );
    // The release crashes while no agent runs; its window is still open.
    crash.flip();

    // `gantry status` starts the next agent, which takes the window up.
    let status = back_from_r2(&p);
    assert_web_answers(service(&status, "web"), "1");
    assert_failed_its_window(&p, "r2");
    // The verdict is recorded once the host is back.
    let mut r2 = Value::Null;
    wait_for("r2's window to end", Duration::from_secs(20), || {
        r2 = listed_release(&p, "r2");
        !["watching", "reverting"].contains(&r2["verify"]["state"].as_str().unwrap_or_default())
    });
    assert_eq!(r2["verify"]["state"], "failed", "{r2:#}");
    assert_eq!(r2["verify"]["failure"]["went_back"], true, "{r2:#}");
}

#[test]
fn a_deploy_that_arrives_inside_the_window_ends_it_and_the_watched_release_counts_as_passed() {
    let (p, _crash, cli, _) = crashing_deploy_watched("verify-newer-deploy");
    sigkill(cli);
    // While it is watched, the release is listed as it runs: succeeded.
    let r2 = listed_release(&p, "r2");
    assert_eq!(r2["outcome"], "succeeded", "{r2:#}");
    assert_eq!(r2["verify"]["state"], "watching", "{r2:#}");
    assert_eq!(r2["verify"]["previous"], "r1", "{r2:#}");
    let p = p
        .file(
            "gantry.toml",
            &hello_toml("verify-newer-deploy", "bin/hello-web"),
        )
        .file("VERSION", "3\n");
    let report = deploy(&p);
    assert_eq!(report["release"]["id"], "r3", "{report:#}");

    let r2 = listed_release(&p, "r2");
    assert_eq!(r2["outcome"], "succeeded", "{r2:#}");
    assert_eq!(r2["verify"]["state"], "ended", "{r2:#}");
    let status = status(&p);
    let web = service(&status, "web");
    assert_eq!(web["release"], "r3", "{web:#}");
    assert_web_answers(web, "3");
}

#[test]
fn a_stop_inside_the_window_ends_it_and_nothing_goes_back() {
    let (p, crash, cli, _) = crashing_deploy_watched("verify-stop");
    sigkill(cli);
    p.gantry(&["stop"]).expect_code(0);
    // Stopped by hand, r2's instances are not a failure of its window.
    crash.flip();

    let r2 = listed_release(&p, "r2");
    assert_eq!(r2["outcome"], "succeeded", "{r2:#}");
    assert_eq!(r2["verify"]["state"], "ended", "{r2:#}");
    let releases = json(&p, &["releases"]);
    assert_eq!(
        releases["releases"].as_array().map(Vec::len),
        Some(2),
        "no release went back: {releases:#}"
    );
}

/// The project's agent, from its lock file.
fn agent_pid(p: &TestProject) -> Option<u32> {
    std::fs::read_to_string(p.state_dir().join("agent.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
