//! An image named with its registry, which this machine does not hold, is
//! not shipped: the host's engine pulls it from the registry, here a real
//! one (Debian's `docker-registry`) on a loopback port of the test's own.
//! A registry without the tag, or one that does not answer, fails the
//! deploy with `container.no_image` as its cause, and the previous release
//! keeps running. Needs root, Docker and docker-registry; the image is
//! built here and pushed to the registry.

mod agent_support;

use agent_support::{
    Cleanup, GANTRY, deploy, docker, failed_deploy, image_web_toml, in_ci, web_answer,
};
use gantry_testkit::TestProject;
use gantry_testkit::registry::Registry;

/// An image holding a file no other image holds, its top layer, served
/// at `/`: an answer of `token` comes from that layer.
fn image_serving(token: &str) -> String {
    let base = gantry_testkit::images::busybox_web();
    gantry_testkit::images::build(
        "registry-web",
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {base}\n\
                     COPY index.html /srv/www/index.html\n\
                     CMD [\"sh\", \"-c\", \"exec busybox httpd -f -p \\\"$PORT\\\" -h /srv/www\"]\n"
                ),
            ),
            ("index.html", &format!("{token}\n")),
        ],
    )
}

/// Deploys `image`, which must fail with `container.no_image` as its
/// cause; the cause's message.
fn deploy_fails_without_image(p: &TestProject, name: &str, image: &str) -> String {
    std::fs::write(
        p.path().join("gantry.toml"),
        image_web_toml(name, image, "1"),
    )
    .expect("write gantry.toml");
    let error = failed_deploy(p);
    let cause = &error["details"]["cause"];
    assert_eq!(cause["code"], "container.no_image", "{error:#}");
    let message = cause["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(image), "{error:#}");
    message
}

#[test]
fn an_image_named_with_its_registry_is_pulled_by_the_host_and_a_registry_without_it_fails_the_deploy()
 {
    if !Registry::installed() {
        assert!(!in_ci(), "CI installs docker-registry (.ci/run)");
        eprintln!("skipped: docker-registry is not installed (apt-get install docker-registry)");
        return;
    }
    let name = "test-registry-pull";
    let _cleanup = Cleanup(name.to_owned());
    let mut registry = Registry::start();
    let token = format!(
        "pulled {}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let built = image_serving(&token);
    let image = format!("{}/gantry-test/web:1", registry.address());
    let _pulled = RemoveImage(image.clone());
    docker(&["tag", &built, &image]).expect("docker tag");
    docker(&["push", &image]).unwrap_or_else(|e| panic!("docker push: {e}\n{}", registry.log()));
    // Gone from this machine, layer and all: only the registry has it.
    docker(&["image", "rm", &image, &built]).expect("docker image rm");
    assert!(docker(&["image", "inspect", &image]).is_err());

    let port = gantry_testkit::free_port();
    let p = TestProject::new(GANTRY)
        .file("gantry.toml", &image_web_toml(name, &image, "1"))
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let report = deploy(&p);
    assert_eq!(web_answer(&report), format!("{token}\n"));
    // The engine holds it now, by the registry's digest: it was pulled.
    let digests = docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image])
        .expect("the image is on the host");
    assert!(
        digests.contains(&format!("{}/gantry-test/web@sha256:", registry.address())),
        "{digests}"
    );

    // A tag the registry does not have: the registry's answer says so.
    let absent = format!("{}/gantry-test/web:absent", registry.address());
    let message = deploy_fails_without_image(&p, name, &absent);
    assert!(message.contains("manifest unknown"), "{message}");
    assert_eq!(web_answer(&agent_support::status(&p)), format!("{token}\n"));

    // A registry that does not answer.
    registry.stop();
    let unanswered = format!("{}/gantry-test/web:2", registry.address());
    let message = deploy_fails_without_image(&p, name, &unanswered);
    assert!(message.contains("connection refused"), "{message}");
    assert_eq!(web_answer(&agent_support::status(&p)), format!("{token}\n"));

    p.gantry(&["stop"]).expect_code(0);
}

/// Removes the image the test pulled, however the test ends: its name
/// holds a port no later run will have.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = docker(&["image", "rm", "-f", &self.0]);
    }
}
