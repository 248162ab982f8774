//! `gantry secrets`, as a user checks it: a value set from stdin is stored
//! encrypted in the project with the key in the user's config directory,
//! `list` shows names and times but never a value, a deploy gives the
//! service the stored value, and `secrets sync` gives it a changed value
//! with no failed request, while the value stays out of every output, the
//! process listing and the agent's state but its 0600 secrets file.

mod agent_support;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_support::{
    GANTRY, files_under, hello_toml, json, output, rot13, service, shell, wait_for_status,
};
use gantry_testkit::{KeepAlive, Run, TestProject, example_bins, http_get_host, wait_for};

const SECRET: &str = "hunter2-Kx7QpZ-stored-secret";
const CHANGED: &str = "swordfish-Lm3Vt-changed-secret";

const API: &str = r#"[services.api]
run = "echo \"token rot13: $(printf %s \"$API_TOKEN\" | tr A-Za-z N-ZA-Mn-za-m)\"; exec sleep 600"
secrets = ["API_TOKEN"]
health = { command = "true" }
"#;

/// The user's config directory, outside the project.
fn with_config(p: TestProject, config: &tempfile::TempDir) -> TestProject {
    p.env("XDG_CONFIG_HOME", &config.path().display().to_string())
}

fn set(p: &TestProject, name: &str, value: &str) -> Run {
    let run = p.gantry_with_stdin(
        &["secrets", "set", name, "--output", "json"],
        format!("{value}\n").as_bytes(),
    );
    run.expect_code(0);
    run
}

fn holds(bytes: &[u8], value: &str) -> bool {
    bytes.windows(value.len()).any(|w| w == value.as_bytes())
}

fn assert_not_in_runs(runs: &[Run], value: &str) {
    for run in runs {
        assert!(
            !output(run).contains(value),
            "`gantry {}` printed the secret:\n{}",
            run.args.join(" "),
            output(run)
        );
    }
}

/// Every file of the state directory but the project's 0600 secrets file.
fn assert_not_under_state(p: &TestProject, project: &str, value: &str) {
    let secrets = p.state_dir().join(format!("secrets/{project}.env"));
    let mode = std::fs::metadata(&secrets)
        .expect("the agent's secrets file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let files = files_under(p.state_dir());
    assert!(files.iter().any(|f| f.ends_with("agent.db")), "{files:?}");
    for file in files.iter().filter(|f| **f != secrets) {
        match std::fs::read(file) {
            Ok(bytes) => assert!(!holds(&bytes, value), "{} holds the secret", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", file.display()),
        }
    }
}

fn assert_not_in_ps(value: &str) {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args", "ww"])
        .output()
        .expect("run ps");
    assert!(ps.status.success());
    assert!(!holds(&ps.stdout, value), "`ps` shows the secret");
}

#[test]
fn a_secret_set_from_stdin_is_listed_by_name_and_stored_encrypted() {
    let config = tempfile::tempdir().expect("tempdir");
    let p = with_config(shell("sec-list", API), &config);
    let mut runs = vec![set(&p, "API_TOKEN", SECRET)];

    let key = config.path().join("gantry/identity.txt");
    let mode = std::fs::metadata(&key)
        .expect("the key is made on first use")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&key)
            .expect("key")
            .contains("AGE-SECRET-KEY-")
    );
    let stored = std::fs::read(p.path().join(".gantry/secrets/local.age")).expect("the store");
    assert!(
        !holds(&stored, SECRET),
        "the store holds the value in clear"
    );
    assert!(
        !holds(&stored, "API_TOKEN"),
        "the store holds the name in clear"
    );
    assert!(
        !files_under(p.path())
            .iter()
            .any(|f| f.ends_with("identity.txt")),
        "the key is not in the project"
    );

    let show = p.gantry(&["show", "--output", "json"]);
    show.expect_code(0);
    assert_eq!(
        show.json()["secrets"][0]["available"],
        true,
        "{}",
        show.stdout
    );
    runs.push(show);

    let list = p.gantry(&["secrets", "list", "--output", "json"]);
    list.expect_code(0);
    let secrets = list.json()["secrets"].clone();
    assert_eq!(secrets.as_array().map(Vec::len), Some(1), "{secrets:#}");
    assert_eq!(secrets[0]["name"], "API_TOKEN");
    assert_eq!(secrets[0]["environment"], "local");
    assert!(secrets[0]["changed_at"].as_u64().is_some_and(|t| t > 0));
    let text = p.gantry(&["secrets", "list", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("API_TOKEN\tlocal\t"),
        "{}",
        text.stdout
    );
    runs.extend([list, text]);

    // The same value again changes nothing; a dotenv file adds the rest.
    let again = set(&p, "API_TOKEN", SECRET);
    assert_eq!(again.json()["unchanged"][0], "API_TOKEN");
    std::fs::write(
        p.path().join("prod.env"),
        "# from the old host\nexport OTHER_TOKEN=\"other-value-1234\"\n",
    )
    .expect("write");
    let import = p.gantry(&["secrets", "import", "prod.env", "--output", "json"]);
    import.expect_code(0);
    assert_eq!(import.json()["changed"][0], "OTHER_TOKEN");
    let rm = p.gantry(&["secrets", "rm", "OTHER_TOKEN", "--output", "json"]);
    rm.expect_code(0);
    let gone = p.gantry(&["secrets", "rm", "OTHER_TOKEN", "--output", "json"]);
    gone.expect_code(3);
    assert_eq!(gone.json()["error"]["code"], "secrets.not_found");
    let list = p.gantry(&["secrets", "list", "--all", "--output", "json"]);
    assert_eq!(list.json()["secrets"].as_array().map(Vec::len), Some(1));
    runs.extend([again, import, rm, gone, list]);
    assert_not_in_runs(&runs, SECRET);
}

#[test]
fn secrets_set_at_once_by_eight_commands_are_all_kept() {
    let config = tempfile::tempdir().expect("tempdir");
    let p = with_config(shell("sec-race", API), &config);
    // The first set makes the key, so that the eight race for the store only.
    set(&p, "FIRST", "first-value-0000");
    let names: Vec<String> = (0..8).map(|i| format!("RACE_{i}")).collect();
    std::thread::scope(|s| {
        for name in &names {
            let p = &p;
            s.spawn(move || set(p, name, &format!("value-of-{name}")));
        }
    });
    let list = p.gantry(&["secrets", "list", "--output", "json"]);
    list.expect_code(0);
    let listed: Vec<String> = list.json()["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    for name in names.iter().chain([&"FIRST".to_owned()]) {
        assert!(listed.contains(name), "{name} was lost: {listed:?}");
    }
}

#[test]
fn list_all_refuses_an_environment_it_would_ignore() {
    let config = tempfile::tempdir().expect("tempdir");
    let p = with_config(shell("sec-all", API), &config);
    let run = p.gantry(&["secrets", "list", "--all", "-e", "local"]);
    run.expect_code(2);
    assert!(output(&run).contains("--all"), "{}", output(&run));
}

#[test]
fn a_value_is_never_taken_from_the_command_line_nor_empty() {
    let config = tempfile::tempdir().expect("tempdir");
    let p = with_config(shell("sec-argv", API), &config);
    let argv = p.gantry(&["secrets", "set", "API_TOKEN", SECRET]);
    argv.expect_code(2);
    let empty = p.gantry_with_stdin(&["secrets", "set", "API_TOKEN", "--output", "json"], b"");
    empty.expect_code(3);
    assert_eq!(empty.json()["error"]["code"], "secrets.invalid");
    let name = p.gantry_with_stdin(&["secrets", "set", "api-token", "--output", "json"], b"x");
    name.expect_code(3);
    assert_eq!(name.json()["error"]["code"], "secrets.invalid");
    assert!(!p.path().join(".gantry/secrets/local.age").exists());
}

#[test]
fn without_the_key_a_deploy_stops_and_says_where_the_key_goes() {
    let config = tempfile::tempdir().expect("tempdir");
    let p = with_config(shell("sec-nokey", API), &config);
    set(&p, "API_TOKEN", SECRET);
    std::fs::remove_file(config.path().join("gantry/identity.txt")).expect("remove the key");
    let deploy = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    deploy.expect_code(3);
    let error = &deploy.json()["error"];
    assert_eq!(error["code"], "secrets.key_missing", "{error:#}");
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|h| h.contains("identity.txt")),
        "{error:#}"
    );

    // Another key cannot read it either.
    let other = tempfile::tempdir().expect("tempdir");
    let q = with_config(shell("sec-nokey", API), &other);
    set(&q, "API_TOKEN", "another-value");
    std::fs::copy(
        p.path().join(".gantry/secrets/local.age"),
        q.path().join(".gantry/secrets/local.age"),
    )
    .expect("copy");
    let list = q.gantry(&["secrets", "list", "--output", "json"]);
    list.expect_code(3);
    assert_eq!(list.json()["error"]["code"], "secrets.key_mismatch");
}

/// The example's web service behind the proxy, and a service that prints
/// the rot13 of its secret; both use API_TOKEN, which the environment also
/// sets: the store comes first.
fn hello_with_secret(port: u16, config: &tempfile::TempDir) -> TestProject {
    let bins = example_bins();
    let toml = hello_toml("secz", "bin/hello-web").replace(
        "replicas = 2\n",
        "replicas = 2\nsecrets = [\"API_TOKEN\"]\n",
    );
    let p = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file("gantry.toml", &format!("{toml}\n{API}"))
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
        .env("API_TOKEN", "from-the-cli-environment");
    with_config(p, config)
}

fn api_printed(p: &TestProject, value: &str) -> bool {
    let logs = p.gantry(&["logs", "api", "--output", "json"]);
    logs.stdout
        .contains(&format!("token rot13: {}", rot13(value)))
}

#[test]
fn a_stored_secret_reaches_the_service_and_a_synced_change_restarts_it_with_no_failed_request() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = tempfile::tempdir().expect("tempdir");
    let p = hello_with_secret(port, &config);
    let mut runs = vec![set(&p, "API_TOKEN", SECRET)];
    let deploy = p.gantry(&["deploy", "--skip-build", "--output", "json", "-vvv"]);
    deploy.expect_code(0);
    runs.push(deploy);
    wait_for_status(&p, "the api to run", |s| {
        service(s, "api")["state"] == "running"
    });
    wait_for(
        "the api to print its token",
        agent_support::DEADLINE,
        || api_printed(&p, SECRET),
    );
    assert_not_in_ps(SECRET);

    // Load through the proxy while the changed secret is synced.
    const HOST: &str = "web.secz.localhost";
    let (code, _) = http_get_host(port, HOST, "/").expect("the proxy answers");
    assert_eq!(code, 200);
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port, HOST);
                let mut answers: Vec<Result<u16, String>> = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let answer = if keep_alive {
                        client.get("/")
                    } else {
                        http_get_host(port, HOST, "/")
                    };
                    answers.push(answer.map(|(code, _)| code).map_err(|e| e.to_string()));
                }
                answers
            })
        })
        .collect();
    runs.push(set(&p, "API_TOKEN", CHANGED));
    let sync = p.gantry(&["secrets", "sync", "--output", "json", "-vvv"]);
    done.store(true, Ordering::SeqCst);
    let answers: Vec<Result<u16, String>> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a load client"))
        .collect();
    sync.expect_code(0);
    let report = sync.json();
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    assert!(!answers.is_empty());
    let failed: Vec<_> = answers.iter().filter(|a| !matches!(a, Ok(200))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the sync: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    runs.push(sync);

    let synced = wait_for_status(&p, "the api on the synced release", |s| {
        service(s, "api")["release"] == "r2" && service(s, "api")["state"] == "running"
    });
    assert_eq!(service(&synced, "web")["release"], "r2");
    wait_for(
        "the api to print the new token",
        agent_support::DEADLINE,
        || api_printed(&p, CHANGED),
    );
    assert_not_in_ps(CHANGED);
    // The sync deployed r1 again for its secrets: a redeploy, not a rollback.
    let r2 = json(&p, &["releases", "show", "r2"]);
    assert_eq!(r2["redeploy_of"], "r1", "{r2:#}");
    assert!(r2["rollback_of"].is_null(), "{r2:#}");
    let listed = p.gantry(&["releases", "--output", "text"]);
    listed.expect_code(0);
    assert!(
        listed.stdout.contains("(redeploy of r1)") && !listed.stdout.contains("rollback"),
        "{}",
        listed.stdout
    );
    for args in [
        &["status"][..],
        &["releases"],
        &["releases", "show", "r2"],
        &["secrets", "list"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        runs.push(p.gantry(&args));
    }
    json(&p, &["stop"]);
    for value in [SECRET, CHANGED] {
        assert_not_in_runs(&runs, value);
    }
    for value in [SECRET, CHANGED] {
        assert_not_under_state(&p, "secz", value);
    }
}
