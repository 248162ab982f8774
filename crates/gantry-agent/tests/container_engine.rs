//! The container engine layer against the real Docker engine, with real
//! images built here (`gantry_testkit::images`): Redis answers on its
//! loopback port, containers are labelled and found again, a volume
//! outlives its container, services reach each other by name, secrets stay
//! out of `docker inspect`, limits are enforced. Needs root and Docker.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gantry_agent::container::{
    ContainerSpec, Engine, Identity, Publish, Resources, SecretValue, VolumeMount,
};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A project of its own per test; dropping it removes every container,
/// the network and the volumes Docker holds for it.
struct Project {
    name: String,
    secrets: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project {
            name: format!(
                "test-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::SeqCst)
            ),
            secrets: tempfile::tempdir().expect("create the secrets directory"),
        }
    }

    /// The agent the test's engine stands for: one per test, since an
    /// agent's settle removes every container of its own that its store
    /// does not count, and the tests run side by side.
    fn owner(&self) -> String {
        format!("gantry-{}", self.name)
    }

    async fn engine(&self) -> Engine {
        Engine::connect(
            Path::new("/var/run/docker.sock"),
            self.secrets.path(),
            &self.owner(),
        )
        .await
        .expect("connect to Docker")
    }

    fn spec(&self, service: &str, instance: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            identity: Identity {
                project: self.name.clone(),
                environment: "dev".to_owned(),
                service: service.to_owned(),
                release: "r1".to_owned(),
                // Instance ids name their service, as the agent's do.
                instance: format!("{service}-{instance}"),
            },
            image: image.to_owned(),
            command: None,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            publish: None,
            resources: Resources::default(),
            volumes: Vec::new(),
            user: None,
            stop_timeout: Duration::from_secs(5),
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let label = format!("label=dev.gantry.project={}", self.name);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        for id in ids.lines() {
            docker(&["rm", "-f", id]);
        }
        for volume in docker(&["volume", "ls", "-q", "--filter", &label]).lines() {
            docker(&["volume", "rm", "-f", volume]);
        }
        docker(&["network", "rm", &format!("gantry-{}-dev", self.name)]);
    }
}

/// The docker CLI's stdout (what a user would see).
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Sends a Redis inline command to 127.0.0.1:`port`, polling until Redis
/// answers; its first reply line.
fn redis_at(port: u16, command: &str) -> String {
    let started = Instant::now();
    loop {
        let attempt = gantry_testkit::images::redis_command(port, command);
        match attempt {
            Ok(reply) if !reply.is_empty() && !reply.starts_with("-LOADING") => return reply,
            other => assert!(
                started.elapsed() < Duration::from_secs(30),
                "Redis on 127.0.0.1:{port} does not answer `{command}`: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `command` inside the container until it exits 0; its output.
async fn exec_until_ok(engine: &Engine, container: &str, command: &[&str]) -> String {
    let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
    let started = Instant::now();
    loop {
        let outcome = engine
            .exec(container, &command, Duration::from_secs(10))
            .await
            .expect("exec");
        if outcome.exit_code == Some(0) {
            return outcome.output.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "`{}` kept failing: {outcome:?}",
            command.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the container `spec` describes, with no secret values, and
/// starts it: its id.
async fn started(engine: &Engine, spec: &ContainerSpec) -> String {
    let id = engine.create(spec, &BTreeMap::new()).await.expect("create");
    engine.start(&id).await.expect("start");
    id
}

#[tokio::test]
async fn redis_container_answers_on_loopback_is_labelled_then_stopped_and_removed() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    // Docker 20.10 here: the agreed version is the daemon's, not bollard's newer one.
    let daemon = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(engine.api_version(), daemon.trim());

    let port = free_port();
    let mut spec = project.spec("cache", "i1", &image);
    spec.publish = Some(Publish {
        container: 6379,
        host: port,
    });
    let id = started(&engine, &spec).await;
    assert_eq!(redis_at(port, "PING"), "+PONG");
    // Published on loopback only.
    let bindings = docker(&[
        "inspect",
        "--format",
        "{{json .HostConfig.PortBindings}}",
        &id,
    ]);
    assert!(
        bindings.contains(&format!("\"HostIp\":\"127.0.0.1\",\"HostPort\":\"{port}\"")),
        "{bindings}"
    );

    let listed = engine.list(&project.name).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert!(listed[0].running);
    assert_eq!(listed[0].host_port, Some(port));
    assert_eq!(listed[0].identity.as_ref(), Some(&spec.identity));
    let labels = docker(&["inspect", "--format", "{{json .Config.Labels}}", &id]);
    for (key, value) in [
        ("dev.gantry.project", project.name.as_str()),
        ("dev.gantry.service", "cache"),
        ("dev.gantry.release", "r1"),
        ("dev.gantry.instance", "cache-i1"),
        ("dev.gantry.agent", project.owner().as_str()),
    ] {
        assert!(
            labels.contains(&format!("\"{key}\":\"{value}\"")),
            "{labels}"
        );
    }

    // A health command runs inside; memory and output are readable.
    assert_eq!(
        exec_until_ok(&engine, &id, &["redis-cli", "ping"]).await,
        "PONG"
    );
    let failing = engine
        .exec(&id, &["false".to_owned()], Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(failing.exit_code, Some(1));
    let memory = engine.memory(&id).await.expect("stats");
    assert!(memory.is_some_and(|m| m > 0), "{memory:?}");
    let mut logs = engine.logs(&id, Some(100), false);
    let mut text = String::new();
    while let Some(line) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&line.expect("log line").bytes));
    }
    assert!(text.contains("Ready to accept connections"), "{text}");

    engine
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    let stopped = engine.inspect(&id).await.expect("inspect").expect("exists");
    assert!(!stopped.running);
    // Redis exits 0 on SIGTERM: a graceful stop, not a kill.
    assert_eq!(stopped.exit_code, Some(0));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    engine.remove(&id).await.expect("remove");
    assert!(engine.inspect(&id).await.expect("inspect").is_none());
    assert!(engine.list(&project.name).await.expect("list").is_empty());
    // Removing again is not an error: the container is gone, as asked.
    engine.remove(&id).await.expect("remove twice");
}

#[tokio::test]
async fn a_named_volume_keeps_its_data_when_the_container_is_replaced() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let volume = VolumeMount::parse("data:/var/lib/redis").expect("a volume");
    let port = free_port();
    let mut first = project.spec("cache", "i1", &image);
    first.publish = Some(Publish {
        container: 6379,
        host: port,
    });
    first.volumes = vec![volume.clone()];
    let id = started(&engine, &first).await;
    assert_eq!(redis_at(port, "SET visits 41"), "+OK");
    assert_eq!(redis_at(port, "INCR visits"), ":42");
    engine
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    engine.remove(&id).await.expect("remove");

    let mut second = first.clone();
    second.identity.instance = "i2".to_owned();
    second.identity.release = "r2".to_owned();
    started(&engine, &second).await;
    assert_eq!(redis_at(port, "GET visits"), "$2");
    assert_eq!(redis_at(port, "INCR visits"), ":43");
}

#[tokio::test]
async fn containers_on_the_project_network_reach_each_other_by_service_name() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let cache_spec = project.spec("cache", "i1", &image);
    started(&engine, &cache_spec).await;
    let mut web = project.spec("web", "i1", &image);
    web.command = Some(vec!["sleep".to_owned(), "infinity".to_owned()]);
    let web = started(&engine, &web).await;
    assert_eq!(
        exec_until_ok(&engine, &web, &["redis-cli", "-h", "cache", "ping"]).await,
        "PONG"
    );
    // Another project's network has its own `cache`, and never reaches
    // this project's containers, not even by their container names.
    let other = Project::new();
    let other_engine = other.engine().await;
    started(&other_engine, &other.spec("cache", "i1", &image)).await;
    let mut probe = other.spec("web", "i1", &image);
    probe.command = Some(vec!["sleep".to_owned(), "infinity".to_owned()]);
    let probe = started(&other_engine, &probe).await;
    assert_eq!(
        exec_until_ok(&other_engine, &probe, &["redis-cli", "-h", "cache", "ping"]).await,
        "PONG"
    );
    let answered = other_engine
        .exec(
            &probe,
            &[
                "getent".to_owned(),
                "hosts".to_owned(),
                cache_spec.identity.container_name(),
            ],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_ne!(answered.exit_code, Some(0), "{answered:?}");
}

#[tokio::test]
async fn secrets_reach_the_container_as_files_and_stay_out_of_docker_inspect() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let mut spec = project.spec("cache", "i1", &image);
    spec.secrets = vec!["API_TOKEN".to_owned()];
    spec.env = BTreeMap::from([("MODE".to_owned(), "test".to_owned())]);
    let value = "tok-7f3a9c-not-in-inspect";
    let values = BTreeMap::from([("API_TOKEN".to_owned(), SecretValue::new(value))]);
    let id = engine.create(&spec, &values).await.expect("create");
    engine.start(&id).await.expect("start");
    // The image runs as `redis`: the file is that user's, 0400, and readable.
    assert_eq!(
        exec_until_ok(&engine, &id, &["sh", "-c", "cat \"$API_TOKEN_FILE\""]).await,
        value
    );
    assert_eq!(
        exec_until_ok(
            &engine,
            &id,
            &["stat", "-c", "%U %a", "/run/secrets/API_TOKEN"]
        )
        .await,
        "redis 400"
    );
    assert_eq!(
        exec_until_ok(&engine, &id, &["sh", "-c", "echo \"$MODE\""]).await,
        "test"
    );
    let inspect = docker(&["inspect", &id]);
    assert!(inspect.contains("API_TOKEN_FILE=/run/secrets/API_TOKEN"));
    assert!(!inspect.contains(value), "the secret is in docker inspect");
    // A secret without a value is refused before anything runs.
    let mut missing = project.spec("cache", "i2", &image);
    missing.secrets = vec!["OTHER".to_owned()];
    let error = engine.create(&missing, &values).await.expect_err("refused");
    assert!(error.to_string().contains("OTHER"), "{error}");
    assert_eq!(engine.list(&project.name).await.expect("list").len(), 1);
}

#[tokio::test]
async fn a_piped_command_past_its_time_limit_is_killed() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let id = started(&engine, &project.spec("db", "i1", &image)).await;
    exec_until_ok(&engine, &id, &["true"]).await;
    let out = project.secrets.path().join("dump.out");
    // A dump that never ends.
    let command = [
        "sh".to_owned(),
        "-c".to_owned(),
        "echo $$ > /tmp/dump.pid; echo started; exec sleep 600".to_owned(),
    ];
    let piped = engine
        .exec_piped(&id, &command, None, Some(&out), Duration::from_secs(2))
        .await
        .expect("ran");
    assert!(piped.timed_out, "{piped:?}");
    assert_eq!(piped.exit_code, None);
    // Gone from the container, not left running on its own.
    let gone =
        "pid=$(cat /tmp/dump.pid); ! [ -d /proc/$pid ] || grep -q '^State:.*Z' /proc/$pid/status";
    exec_until_ok(&engine, &id, &["sh", "-c", gone]).await;
}

#[tokio::test]
async fn a_check_past_its_timeout_is_killed() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let id = started(&engine, &project.spec("db", "i1", &image)).await;
    exec_until_ok(&engine, &id, &["true"]).await;
    let command = [
        "sh".to_owned(),
        "-c".to_owned(),
        "echo $$ > /tmp/check.pid; exec sleep 600".to_owned(),
    ];
    let outcome = engine
        .exec(&id, &command, Duration::from_secs(2))
        .await
        .expect("ran");
    assert_eq!(outcome.exit_code, None, "{outcome:?}");
    let gone =
        "pid=$(cat /tmp/check.pid); ! [ -d /proc/$pid ] || grep -q '^State:.*Z' /proc/$pid/status";
    exec_until_ok(&engine, &id, &["sh", "-c", gone]).await;
}

#[tokio::test]
async fn memory_and_pids_limits_are_enforced_by_the_containers_cgroup() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let mut spec = project.spec("cache", "i1", &image);
    spec.resources = Resources {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(50),
    };
    let id = started(&engine, &spec).await;
    // cgroup v1 names them memory.limit_in_bytes and pids.max; v2 memory.max.
    let memory = exec_until_ok(
        &engine,
        &id,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ],
    )
    .await;
    assert_eq!(memory, (64u64 << 20).to_string());
    let pids = exec_until_ok(
        &engine,
        &id,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        ],
    )
    .await;
    assert_eq!(pids, "50");
}

#[tokio::test]
async fn an_image_the_host_lacks_is_named_in_the_error() {
    let project = Project::new();
    let engine = project.engine().await;
    let error = engine
        .create(
            &project.spec("web", "i1", "gantry-test-absent:nothing"),
            &BTreeMap::new(),
        )
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("gantry-test-absent:nothing"),
        "{error}"
    );
}

#[tokio::test]
async fn settling_keeps_counted_containers_and_removes_every_other_of_the_project() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let counted = project.spec("cache", "i2", &image);
    let stale = project.spec("cache", "i1", &image);
    let mut ids = Vec::new();
    for spec in [&counted, &stale] {
        let id = started(&engine, spec).await;
        ids.push(id);
    }
    // Not Gantry's: no labels. Never touched; nor is another agent's.
    let other_agent = Engine::connect(
        Path::new("/var/run/docker.sock"),
        project.secrets.path(),
        "gantry-test-another-agent",
    )
    .await
    .expect("connect");
    let theirs = other_agent
        .create(&project.spec("cache", "i3", &image), &BTreeMap::new())
        .await
        .expect("create");
    let outsider = format!("gantry-test-outsider-{}", project.name);
    let output = Command::new("docker")
        .args(["run", "-d", "--name", &outsider, &image])
        .output()
        .expect("docker run");
    assert!(output.status.success(), "{output:?}");

    let plan = engine.settle(&[counted.identity.clone()].into()).await;
    let outsider_state = engine.inspect(&outsider).await;
    docker(&["rm", "-f", &outsider]);
    let plan = plan.expect("settle");
    assert_eq!(plan.len(), 2, "{plan:?}");
    let remaining = engine.list(&project.name).await.expect("list");
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].id, ids[0]);
    assert!(remaining[0].running);
    assert!(engine.inspect(&ids[1]).await.expect("inspect").is_none());
    assert!(engine.inspect(&theirs).await.expect("inspect").is_some());
    let outsider_state = outsider_state.expect("inspect");
    assert!(outsider_state.is_some_and(|s| s.running && s.identity.is_none()));
}

/// A one-off task's exit code comes from waiting for its container: while
/// it runs, an inspect says exit code 0, which is no outcome at all.
#[tokio::test]
async fn waiting_for_a_container_gives_its_exit_code_once_it_has_exited() {
    let image = gantry_testkit::images::redis();
    let project = Project::new();
    let engine = project.engine().await;
    let mut spec = project.spec("db", "task-1", &image);
    spec.command = Some(vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo waiting; while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 3".to_owned(),
    ]);
    let id = started(&engine, &spec).await;
    exec_until_ok(&engine, &id, &["true"]).await;
    let running = engine.inspect(&id).await.expect("inspect").expect("exists");
    assert!(running.running);
    assert_eq!(running.exit_code, Some(0), "what an inspect says of it");
    let waited = {
        let engine = engine.clone();
        let id = id.clone();
        tokio::spawn(async move { engine.wait(&id).await })
    };
    exec_until_ok(&engine, &id, &["touch", "/tmp/go"]).await;
    let exit = waited.await.expect("joined").expect("waited");
    assert_eq!(exit, Some(3));
    // Once exited, a wait answers at once; a success is code 0.
    assert_eq!(engine.wait(&id).await.expect("waited"), Some(3));
    let mut spec = project.spec("db", "task-2", &image);
    spec.command = Some(vec!["true".to_owned()]);
    let ok = started(&engine, &spec).await;
    assert_eq!(engine.wait(&ok).await.expect("waited"), Some(0));
    // No such container: nothing to wait for.
    engine.remove(&ok).await.expect("remove");
    assert_eq!(engine.wait(&ok).await.expect("waited"), None);
}
