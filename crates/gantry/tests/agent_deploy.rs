//! Deploys on this machine, checked as a user would: the real binary starts
//! its agent, the example's web service answers over HTTP, `status` names each
//! instance, a redeploy switches versions, a rollback goes back, a broken
//! release leaves the running one alone, and `stop`/`restart` do what they say.

mod agent_support;

use gantry_testkit::TestProject;

use agent_support::{
    Lines, alive, assert_web_answers, command, deploy, hello, hello_toml, instances, json, pids,
    ports, service, shell, status, wait_for_status,
};

#[test]
fn deploy_starts_every_service_and_status_shows_each_instance() {
    let p = hello("deploy-status", "1");
    let report = deploy(&p);
    assert_eq!(report["release"]["id"], "r1", "{report:#}");
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");

    let status = status(&p);
    let web = service(&status, "web");
    assert_eq!(web["state"], "running", "{web:#}");
    assert_eq!(web["release"], "r1");
    assert_eq!(instances(web).len(), 2, "two replicas: {web:#}");
    for instance in instances(web) {
        assert_eq!(instance["state"], "live", "{instance:#}");
        assert_eq!(instance["healthy"], true, "{instance:#}");
        assert_eq!(instance["restarts"], 0, "{instance:#}");
        assert_eq!(instance["release"], "r1", "{instance:#}");
        assert!(
            instance["memory"].as_u64().is_some_and(|m| m > 0),
            "memory in use: {instance:#}"
        );
    }
    for pid in pids(web) {
        assert!(alive(pid), "web pid {pid} runs");
    }
    for port in ports(web) {
        assert!((20_000..=29_999).contains(&port), "port {port}");
        let url = format!("http://127.0.0.1:{port}/");
        assert!(
            web["urls"]
                .as_array()
                .is_some_and(|u| u.contains(&url.into())),
            "{web:#}"
        );
    }
    assert_web_answers(web, "1");

    let limits = &web["limits"];
    assert_eq!(limits["memory"], 64 * 1024 * 1024, "{limits}");
    assert_eq!(limits["pids"], 64, "{limits}");
    let via = limits["via"].as_str().expect("via");
    assert!(
        ["cgroup v2", "cgroup v1", "none"].contains(&via),
        "{limits}"
    );
    assert_eq!(limits["enforced"], via != "none", "{limits}");

    let worker = service(&status, "worker");
    assert_eq!(worker["state"], "running", "{worker:#}");
    assert_eq!(worker["release"], "r1");
    assert_eq!(instances(worker).len(), 1);
    assert!(instances(worker)[0].get("port").is_none(), "{worker:#}");
    assert!(alive(pids(worker)[0]));
    // The worker asks for no limits, so it runs under the defaults.
    let limits = &worker["limits"];
    assert_eq!(limits["memory"], 512 * 1024 * 1024, "{worker:#}");
    assert_eq!(limits["pids"], 512, "{worker:#}");
    assert_eq!(limits["enforced"], via != "none", "{worker:#}");

    let text = p.gantry(&["status", "--output", "text"]);
    text.expect_code(0);
    for pid in pids(web) {
        assert!(
            text.stdout.contains(&format!("pid {pid}")),
            "{}",
            text.stdout
        );
    }
    assert!(text.stdout.contains("limits "), "{}", text.stdout);
}

#[test]
fn redeploy_switches_to_the_new_version_and_stops_the_old_instances() {
    let p = hello("redeploy", "1");
    deploy(&p);
    let before = status(&p);
    let old: Vec<u32> = ["web", "worker"]
        .iter()
        .flat_map(|s| pids(service(&before, s)))
        .collect();

    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    let report = deploy(&p);
    assert_eq!(report["release"]["id"], "r2", "{report:#}");
    assert_eq!(
        report["upload"]["blobs_sent"], 1,
        "only the changed file is sent: {report:#}"
    );

    let after = status(&p);
    for name in ["web", "worker"] {
        let s = service(&after, name);
        assert_eq!(s["state"], "running", "{s:#}");
        assert_eq!(s["release"], "r2", "{s:#}");
        for pid in pids(s) {
            assert!(alive(pid) && !old.contains(&pid), "{name} pid {pid} is new");
        }
    }
    for pid in old {
        assert!(!alive(pid), "old instance {pid} was stopped by the deploy");
    }
    assert_web_answers(service(&after, "web"), "2");
}

#[test]
fn rollback_runs_the_previous_release_from_its_stored_files() {
    let p = hello("rollback", "1");
    let first = deploy(&p);
    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    deploy(&p);
    // What is on disk now must not matter: the rollback runs r1's stored files.
    std::fs::write(p.path().join("VERSION"), "3\n").expect("write VERSION");
    std::fs::remove_file(p.path().join("bin/hello-web")).expect("remove the binary");

    let back = json(&p, &["rollback"]);
    assert_eq!(back["release"]["id"], "r3", "{back:#}");
    assert_eq!(back["release"]["rollback_of"], "r1", "{back:#}");
    assert_eq!(
        back["release"]["artifact_digest"], first["release"]["artifact_digest"],
        "{back:#}"
    );
    assert_eq!(back["build"], serde_json::json!([]), "nothing rebuilt");
    let now = status(&p);
    assert_eq!(service(&now, "web")["release"], "r3");
    assert_eq!(service(&now, "worker")["release"], "r3");
    assert_web_answers(service(&now, "web"), "1");

    let to = json(&p, &["rollback", "--to", "r2"]);
    assert_eq!(to["release"]["id"], "r4", "{to:#}");
    assert_eq!(to["release"]["rollback_of"], "r2", "{to:#}");
    assert_web_answers(service(&status(&p), "web"), "2");

    let missing = p.gantry(&["rollback", "--to", "r9", "--output", "json"]);
    missing.expect_code(3);
    assert_eq!(missing.json()["error"]["code"], "release.not_found");
}

#[test]
fn releases_lists_every_release_newest_first_and_show_gives_its_phases() {
    let p = shell(
        "releases",
        r#"[services.app]
run = "exec sleep 600"
health = { command = "true" }
"#,
    );
    deploy(&p);
    std::fs::write(p.path().join("note.txt"), "changed\n").expect("write");
    deploy(&p);

    let list = json(&p, &["releases"]);
    let ids: Vec<&str> = list["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["r2", "r1"], "{list:#}");
    assert!(
        list["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .all(|r| r["outcome"] == "succeeded"),
        "{list:#}"
    );

    // By id or by number.
    for id in ["r1", "1"] {
        let shown = json(&p, &["releases", "show", id]);
        assert_eq!(shown["id"], "r1", "{shown:#}");
        assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
        let phases: Vec<(&str, &str)> = shown["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|ph| {
                (
                    ph["name"].as_str().expect("name"),
                    ph["service"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            phases,
            [
                ("materialize", ""),
                ("start", "app"),
                ("health", "app"),
                ("switch", "app"),
                ("stop-old", "app"),
                ("retention", "")
            ],
            "{shown:#}"
        );
        assert_eq!(shown["services"][0]["name"], "app", "{shown:#}");
    }
    let text = p.gantry(&["releases", "show", "r2", "--output", "text"]);
    text.expect_code(0);
    assert!(text.stdout.contains("release r2"), "{}", text.stdout);

    let unknown = p.gantry(&["releases", "show", "r9", "--output", "json"]);
    unknown.expect_code(3);
    assert_eq!(unknown.json()["error"]["code"], "release.not_found");
}

#[test]
fn deploy_keeps_the_previous_release_when_new_instances_fail_health() {
    let p = hello("unhealthy", "1");
    deploy(&p);
    let before = status(&p);
    let web_before = pids(service(&before, "web"));

    let broken = "echo 'web: DATABASE_URL is not set' >&2; exit 1";
    std::fs::write(
        p.path().join("gantry.toml"),
        hello_toml("unhealthy", broken),
    )
    .expect("write gantry.toml");
    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    let failed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    failed.expect_code(6);
    let error = &failed.json()["error"];
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("r2")),
        "{error:#}"
    );
    // Scripts read why without parsing the message.
    assert_eq!(
        error["details"]["cause"]["code"], "instance.exited",
        "{error:#}"
    );

    let r2 = json(&p, &["releases", "show", "r2"]);
    assert_eq!(r2["outcome"], "failed", "{r2:#}");
    assert_eq!(r2["cause"]["code"], "instance.exited", "{r2:#}");
    let reason = r2["reason"].as_str().expect("a reason");
    assert!(reason.contains("`web`"), "{reason}");
    assert!(reason.contains("exited with status 1"), "{reason}");
    assert!(
        r2["log_tail"]
            .as_array()
            .is_some_and(|t| t.iter().any(|l| l == "web: DATABASE_URL is not set")),
        "{r2:#}"
    );

    let after = status(&p);
    let web = service(&after, "web");
    assert_eq!(web["release"], "r1", "web keeps its release: {web:#}");
    assert_eq!(web["state"], "running", "{web:#}");
    assert_eq!(pids(web), web_before, "the same processes still serve");
    assert!(
        instances(web).iter().all(|i| i["release"] == "r1"),
        "no instance of r2 is left: {web:#}"
    );
    assert_web_answers(web, "1");
    assert!(
        web["reason"].as_str().is_some_and(|r| r.contains("r2")),
        "status says why r2 is not running: {web:#}"
    );
    assert_eq!(
        service(&after, "worker")["release"],
        "r1",
        "the deploy stopped at web"
    );
}

#[test]
fn stop_stops_one_service_or_all_of_them() {
    let p = hello("stop", "1");
    deploy(&p);
    let before = status(&p);
    let worker = pids(service(&before, "worker"));
    let web = pids(service(&before, "web"));

    let stopped = json(&p, &["stop", "worker"]);
    let w = service(&stopped, "worker");
    assert_eq!(w["state"], "stopped", "{w:#}");
    assert!(instances(w).is_empty(), "{w:#}");
    assert!(worker.iter().all(|pid| !alive(*pid)), "worker stopped");
    assert_eq!(service(&stopped, "web")["state"], "running");
    assert!(web.iter().all(|pid| alive(*pid)), "web untouched");
    assert_web_answers(service(&stopped, "web"), "1");

    // Refused as `exec` and `logs` refuse it, naming the services there are.
    let unknown = p.gantry(&["stop", "nosuch", "--output", "json"]);
    unknown.expect_code(4);
    let error = &unknown.json()["error"];
    assert_eq!(error["code"], "env.service_unknown", "{error}");
    assert_eq!(error["hint"], "its services are: web, worker", "{error}");

    let all = json(&p, &["stop"]);
    for name in ["web", "worker"] {
        assert_eq!(service(&all, name)["state"], "stopped", "{all:#}");
    }
    assert!(web.iter().all(|pid| !alive(*pid)), "web stopped");

    // A restart of a stopped service answers once it serves again.
    let back = json(&p, &["restart", "web"]);
    let web = service(&back, "web");
    assert_eq!(web["state"], "running", "{web:#}");
    assert_web_answers(web, "1");
}

#[test]
fn restart_starts_new_processes_on_the_current_release() {
    let p = hello("restart", "1");
    deploy(&p);
    let before = status(&p);
    let web_before = pids(service(&before, "web"));
    let worker_before = pids(service(&before, "worker"));

    json(&p, &["restart", "web"]);
    let after = wait_for_status(&p, "web to run again", |s| {
        let web = service(s, "web");
        web["state"] == "running" && instances(web).iter().all(|i| i["healthy"] == true)
    });
    let web = service(&after, "web");
    assert_eq!(web["release"], "r1", "{web:#}");
    for pid in pids(web) {
        assert!(
            alive(pid) && !web_before.contains(&pid),
            "new web pid {pid}"
        );
    }
    assert!(
        web_before.iter().all(|pid| !alive(*pid)),
        "old web pids gone"
    );
    assert_web_answers(web, "1");
    assert_eq!(
        pids(service(&after, "worker")),
        worker_before,
        "the worker was not restarted"
    );

    // A stopped service comes back too.
    json(&p, &["stop", "worker"]);
    json(&p, &["restart", "worker"]);
    let back = wait_for_status(&p, "the worker to run again", |s| {
        service(s, "worker")["state"] == "running"
    });
    let worker = pids(service(&back, "worker"));
    assert!(
        worker
            .iter()
            .all(|pid| alive(*pid) && !worker_before.contains(pid))
    );
}

/// Copies `from` into the project at `to`, leaving out what a build made.
fn copy_tree(p: TestProject, from: &std::path::Path, to: &str) -> TestProject {
    let mut p = p;
    for entry in std::fs::read_dir(from).expect("read the example") {
        let entry = entry.expect("an entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if to.is_empty() && ["bin", ".gantry", "target"].contains(&name.as_str()) {
            continue;
        }
        let relative = if to.is_empty() {
            name
        } else {
            format!("{to}/{name}")
        };
        p = if entry.path().is_dir() {
            copy_tree(p, &entry.path(), &relative)
        } else {
            p.copy(&entry.path(), &relative)
        };
    }
    p
}

#[test]
fn the_hello_example_deploys_when_copied_out_of_the_repository() {
    let example = gantry_testkit::workspace_root().join("examples/hello");
    // Offline: the example is std only, so its build needs no registry.
    let p = copy_tree(TestProject::new(agent_support::GANTRY), &example, "")
        .env("CARGO_NET_OFFLINE", "true");
    assert!(
        !p.path().starts_with(gantry_testkit::workspace_root()),
        "the copy is outside the repository"
    );
    let report = json(&p, &["deploy"]);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let version = std::fs::read_to_string(example.join("VERSION")).expect("VERSION");
    assert_web_answers(service(&report, "web"), version.trim());
}

/// The release after the first answers, then its web instances exit five
/// seconds after they start: inside the verify window, so the deploy goes
/// back to the first release and says why.
#[test]
fn a_release_that_starts_crashing_after_its_cutover_is_reverted_in_its_verify_window() {
    let p = hello("verify-revert", "1");
    deploy(&p);
    let crashing = "#!/bin/sh\nbin/hello-web & web=$!\nsleep 5\nkill $web\nexit 1\n";
    let p = p
        .file("bin/crashing-web", crashing)
        .file("VERSION", "2\n")
        .file(
            "gantry.toml",
            &hello_toml("verify-revert", "bin/crashing-web")
                .replace("verify = \"0s\"", "verify = \"15s\""),
        );
    let path = p.path().join("bin/crashing-web");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let failed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    failed.expect_code(6);
    let error = &failed.json()["error"];
    assert_eq!(error["code"], "deploy.verify_failed", "{error:#}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("service `web`") && message.contains("15 s verify window"),
        "{message}"
    );
    assert_eq!(
        error["details"]["hosts"][0]["outcome"], "reverted",
        "{error:#}"
    );

    // The first version answers again, from a release of its own.
    let status = status(&p);
    let web = service(&status, "web");
    assert_eq!(web["state"], "running", "{web:#}");
    assert_web_answers(web, "1");
    let releases = json(&p, &["releases"]);
    let r2 = releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .find(|r| r["id"] == "r2")
        .expect("r2");
    assert_eq!(r2["outcome"], "failed", "{r2:#}");
    assert!(
        r2["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("failed its verify window: service `web`")),
        "{r2:#}"
    );
}

/// The CLI deploying the release after the first is killed (SIGKILL) right
/// after its cutover, and the release's web instances exit five seconds
/// after they start, inside its verify window: its agent, which watches the
/// window itself, still goes back to the first release and records why.
#[test]
fn a_release_whose_deploy_is_killed_after_its_cutover_is_still_reverted_by_its_agent() {
    let p = deploy_killed_after_cutover("verify-killed");
    assert_went_back_from_r2(&p);
}

/// As above, and the agent is stopped too, inside the window, before the
/// release's instances exit: the agent that starts next takes the window up
/// again and goes back all the same.
#[test]
fn a_verify_window_is_taken_up_again_by_the_next_agent() {
    let p = deploy_killed_after_cutover("verify-resumed");
    p.gantry(&["agent", "stop"]).expect_code(0);
    // `gantry status` (in the wait) starts the next agent.
    assert_went_back_from_r2(&p);
}

/// A project whose second release (r2) answers, then its web instances
/// exit five seconds after they start, within a 30 s verify window; its
/// deploy is killed once the CLI says the window has begun.
fn deploy_killed_after_cutover(name: &str) -> TestProject {
    let p = hello(name, "1");
    deploy(&p);
    let crashing = "#!/bin/sh\nbin/hello-web & web=$!\nsleep 5\nkill $web\nexit 1\n";
    let p = p
        .file("bin/crashing-web", crashing)
        .file("VERSION", "2\n")
        .file(
            "gantry.toml",
            &hello_toml(name, "bin/crashing-web").replace("verify = \"0s\"", "verify = \"30s\""),
        );
    let path = p.path().join("bin/crashing-web");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut cli = Lines::spawn_stderr(command(&p, &["deploy", "--skip-build", "--output", "json"]));
    // The CLI says so once the host runs r2 and its window has begun.
    cli.until("the CLI to watch r2", |line| line.contains("watching r2"));
    cli.kill();
    p
}

/// Every service of `p` goes back from r2 to the first version, in a
/// release of its own, and r2 is recorded failed with why.
fn assert_went_back_from_r2(p: &TestProject) {
    let status = wait_for_status(p, "every service to go back from r2", |s| {
        ["web", "worker"].iter().all(|name| {
            let it = service(s, name);
            it["release"] != "r2" && it["state"] == "running"
        })
    });
    let web = service(&status, "web");
    assert_web_answers(web, "1");
    let releases = json(p, &["releases"]);
    let find = |id: &str| {
        releases["releases"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["id"] == id))
            .unwrap_or_else(|| panic!("no {id} in {releases:#}"))
    };
    let r2 = find("r2");
    assert_eq!(r2["outcome"], "failed", "{r2:#}");
    let reason = r2["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("failed its verify window: service `web`")
            && reason.contains("30 s verify window"),
        "{r2:#}"
    );
    // The first release runs again, from a release of its own.
    let now = web["release"].as_str().expect("web's release");
    assert_eq!(find(now)["rollback_of"], "r1", "{releases:#}");
    assert_eq!(service(&status, "worker")["release"], now, "{status:#}");
}

/// The release directories of `p`'s project on its agent, by name.
fn release_dirs(p: &TestProject, project: &str) -> std::collections::BTreeSet<String> {
    let dir = p.state_dir().join("releases").join(project);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// A host keeps the files of a project's newest five releases that
/// succeeded (and of what runs): older ones go after each deploy, a
/// rollback to one is refused with `release.artifact_gone`, and a rollback
/// to a kept one still runs its files. (Their blobs wait out an hour's
/// grace: the agent's unit tests show them go.)
#[test]
fn a_host_keeps_the_files_of_the_newest_five_releases_and_refuses_a_rollback_further_back() {
    let p = shell(
        "retention",
        r#"[services.app]
run = "exec sleep 600"
health = { command = "test -f VERSION" }
"#,
    );
    let mut digests = Vec::new();
    for n in 1..=7 {
        std::fs::write(p.path().join("VERSION"), format!("{n}\n")).expect("write VERSION");
        let report = deploy(&p);
        assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
        let digest = report["release"]["artifact_digest"]
            .as_str()
            .expect("a digest");
        digests.push(digest.to_owned());
    }
    // r3..r7 keep their files; r1 and r2 are gone, files and manifests.
    let kept: std::collections::BTreeSet<String> = digests[2..].iter().cloned().collect();
    assert_eq!(release_dirs(&p, "retention"), kept);
    // Every release stays listed, those whose files went marked so.
    let releases = json(&p, &["releases"]);
    let gone: Vec<(&str, bool)> = releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or("?"), r["files_gone"] == true))
        .collect();
    assert_eq!(
        gone,
        [
            ("r7", false),
            ("r6", false),
            ("r5", false),
            ("r4", false),
            ("r3", false),
            ("r2", true),
            ("r1", true)
        ],
        "{releases:#}"
    );
    let text = p.gantry(&["releases", "--output", "text"]);
    text.expect_code(0);
    let marked: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.contains("(files no longer kept)"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(marked, ["r2", "r1"], "{}", text.stdout);

    let gone = p.gantry(&["rollback", "--to", "r2", "--output", "json"]);
    assert_eq!(
        gone.json()["error"]["code"],
        "release.artifact_gone",
        "{}",
        gone.stdout
    );
    assert_eq!(service(&status(&p), "app")["release"], "r7");

    let back = json(&p, &["rollback", "--to", "r3"]);
    assert_eq!(back["release"]["id"], "r8", "{back:#}");
    assert_eq!(back["release"]["outcome"], "succeeded", "{back:#}");
    let now = status(&p);
    let instance = &instances(service(&now, "app"))[0];
    let cwd =
        std::fs::read_link(format!("/proc/{}/cwd", instance["pid"])).expect("the instance's cwd");
    assert_eq!(
        std::fs::read_to_string(cwd.join("VERSION")).expect("VERSION"),
        "3\n"
    );
    // r8 runs r3's files: still five kept (r8/r3, r7, r6, r5, r4).
    assert_eq!(release_dirs(&p, "retention"), kept);
    p.gantry(&["stop"]).expect_code(0);
}
