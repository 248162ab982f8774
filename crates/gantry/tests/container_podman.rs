//! An image service on Podman's Docker-compatible socket instead of
//! Docker's: the agent's `DOCKER_HOST` names it (as the CLI's, whose
//! `docker` finds the image there), and a deploy, a redeploy and a stop
//! work as on Docker, the containers being Podman's. Needs root, Docker
//! (the image is built there, then copied to Podman) and Podman (Debian's
//! `podman`, 4.3).

mod agent_support;

use agent_support::{GANTRY, deploy, image_web_toml, in_ci, service, status, web_answer};
use gantry_testkit::TestProject;
use gantry_testkit::podman::Podman;

/// The project's containers in Podman, by name.
fn podman_containers(podman: &Podman, project: &str) -> Vec<String> {
    let label = format!("label=dev.gantry.project={project}");
    podman
        .docker(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label])
        .expect("docker ps on Podman's socket")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes what a failed test may leave in Podman: containers, network.
struct Cleanup<'a>(&'a Podman, &'static str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in podman_containers(self.0, self.1) {
            let _ = self.0.docker(&["rm", "-f", &name]);
        }
        let _ = self
            .0
            .docker(&["network", "rm", &format!("gantry-{}-local", self.1)]);
    }
}

#[test]
fn an_image_service_deploys_redeploys_and_stops_on_podmans_docker_compatible_socket() {
    if !Podman::installed() {
        assert!(!in_ci(), "CI installs podman (.ci/run)");
        eprintln!("skipped: podman is not installed (apt-get install podman)");
        return;
    }
    let name = "test-podman";
    let podman = Podman::start();
    let _cleanup = Cleanup(&podman, name);
    let image = gantry_testkit::images::busybox_web();
    podman.load_from_docker(&image);
    let port = gantry_testkit::free_port();
    let p = TestProject::new(GANTRY)
        .file("gantry.toml", &image_web_toml(name, &image, "1"))
        .env("DOCKER_HOST", &podman.docker_host())
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));

    let report = deploy(&p);
    assert_eq!(web_answer(&report), "version 1\n");
    // Podman runs it, not the machine's Docker.
    let first = podman_containers(&podman, name);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(agent_support::containers(name).is_empty());
    let now = status(&p);
    assert!(
        service(&now, "web")["instances"][0]["memory"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "Podman's stats give the container's memory: {now:#}"
    );

    std::fs::write(
        p.path().join("gantry.toml"),
        image_web_toml(name, &image, "2"),
    )
    .expect("write gantry.toml");
    let report = deploy(&p);
    assert_eq!(web_answer(&report), "version 2\n");
    let second = podman_containers(&podman, name);
    assert_eq!(second.len(), 1, "the old container is gone: {second:?}");
    assert_ne!(second, first);

    p.gantry(&["stop"]).expect_code(0);
    assert!(podman_containers(&podman, name).is_empty());
}
