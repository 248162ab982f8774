//! Rendered files are checked by the tools that will read them: docker-compose
//! parses the compose file, systemd-analyze verifies the units. Snapshots pin
//! the exact bytes so a change to the output is a reviewed change.

use std::path::Path;
use std::process::Command;

use gantry_testkit::{TestProject, workspace_root};

/// Runs a tool, or skips loudly when it is missing (never under CI, which installs it).
fn tool(program: &str) -> Option<Command> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(Command::new(program));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{program} is missing under CI: .ci/run must install it"
    );
    eprintln!(
        "\n*** SKIPPED: {program} is not installed; run .ci/run or install it to check rendered files ***\n"
    );
    None
}

fn shop() -> TestProject {
    let text = std::fs::read_to_string(workspace_root().join("examples/shop/gantry.toml"))
        .expect("the shop example");
    TestProject::new(env!("CARGO_BIN_EXE_gantry")).file("gantry.toml", &text)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn compose_files_are_accepted_by_docker_compose() {
    let p = shop();
    let run = p.gantry(&[
        "render", "--target", "compose", "--env", "prod", "--out", "out",
    ]);
    run.expect_code(0);
    let report = run.json();
    let unsupported: Vec<String> = report["unsupported"]
        .as_array()
        .expect("unsupported is a list")
        .iter()
        .map(|u| u["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        unsupported.contains(&"services.docs.static".to_owned()),
        "{unsupported:?}"
    );

    for host in ["web-1", "web-2"] {
        let dir = p.path().join("out").join(host);
        let compose = read(&dir.join("compose.yaml"));
        insta::assert_snapshot!(format!("compose_{host}"), compose);
        let Some(mut docker_compose) = tool("docker-compose") else {
            continue;
        };
        // The secret file the header asks for; compose refuses to start without it.
        std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
        std::fs::write(dir.join("secrets/POSTGRES_PASSWORD"), "x").expect("write");
        let out = docker_compose
            .args(["-p", "shop", "-f", "compose.yaml", "config"])
            .current_dir(&dir)
            .output()
            .expect("run docker-compose");
        let normalized = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "docker-compose rejected it:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(normalized.contains("postgres:16"), "{normalized}");
        // As deploy runs it: its network, its volume, the secret as a file.
        assert!(normalized.contains("gantry-shop-prod"), "{normalized}");
        assert!(
            normalized.contains("gantry-shop-prod-pgdata"),
            "{normalized}"
        );
        assert!(
            normalized.contains("POSTGRES_PASSWORD_FILE: /run/secrets/POSTGRES_PASSWORD"),
            "{normalized}"
        );
        assert!(!normalized.contains("POSTGRES_PASSWORD: "), "{normalized}");
        assert!(
            normalized.contains("127.0.0.1"),
            "ports are published on loopback only:\n{normalized}"
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let p = shop();
    let run = p.gantry(&[
        "render", "--target", "systemd", "--env", "prod", "--out", "out",
    ]);
    run.expect_code(0);
    let files: Vec<String> = run.json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        files.iter().filter(|f| f.starts_with("web-1/")).count(),
        5,
        "three web instances, the worker and the target: {files:?}"
    );
    let dir = p.path().join("out/web-1/systemd");
    for unit in ["shop-web-1.service", "shop-worker.service", "shop.target"] {
        insta::assert_snapshot!(format!("systemd_{unit}"), read(&dir.join(unit)));
    }
    let web = read(&dir.join("shop-web-2.service"));
    assert!(
        web.contains("Environment=\"PORT=10001\""),
        "each instance has its own port:\n{web}"
    );
    assert!(
        web.contains("MemoryMax=268435456") && web.contains("CPUQuota=50%"),
        "{web}"
    );
    assert!(web.contains("TimeoutStopSec=15"), "{web}");

    let Some(mut analyze) = tool("systemd-analyze") else {
        return;
    };
    let units: Vec<String> = std::fs::read_dir(&dir)
        .expect("units")
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    let out = analyze
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify also reports on the host's own units; only lines about ours matter.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("shop")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn a_target_with_nothing_to_render_says_so() {
    let p = TestProject::new(env!("CARGO_BIN_EXE_gantry")).file(
        "gantry.toml",
        "[project]\nname = \"site\"\n[services.www]\nstatic = \"public\"\nroutes = [\"example.com\"]\n",
    );
    let run = p.gantry(&[
        "render", "--target", "systemd", "--out", "out", "--output", "json",
    ]);
    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["files"], serde_json::json!([]));
    assert_eq!(report["unsupported"][0]["key"], "services.www.static");
}

/// The unit `gantry configure` installs on systemd hosts, checked by
/// systemd-analyze (the test hosts have no systemd, so this is where the
/// unit itself is verified). Its binary path points at this build's binary.
#[test]
fn the_agent_unit_configure_installs_verifies() {
    let unit = gantry_core::configure::agent_unit();
    for needed in [
        "KillMode=process",
        "Delegate=yes",
        "Environment=MALLOC_ARENA_MAX=2",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=1024:524288",
    ] {
        assert!(unit.contains(needed), "{needed} missing:\n{unit}");
    }
    let Some(mut analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("gantry-agent.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/gantry", env!("CARGO_BIN_EXE_gantry")),
    )
    .expect("write the unit");
    let out = analyze
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gantry-agent"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
