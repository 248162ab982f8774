//! `gantry exec` runs a command as the service runs: in its release, with
//! the environment its instances have (their port included), as the user
//! the agent runs as.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use agent_support::{deploy, hello, ports, service, status};
use gantry_testkit::http_get;

#[test]
fn exec_sees_the_port_and_the_environment_of_the_running_service() {
    let p = hello("execenv", "1");
    deploy(&p);
    let web = status(&p);
    let live = ports(service(&web, "web"));

    let run = p.gantry(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo \"$PORT\"; echo \"$GANTRY_SERVICE $GANTRY_RELEASE $GANTRY_INSTANCE\"",
    ]);
    run.expect_code(0);
    let mut lines = run.stdout.lines();
    let port: u16 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no PORT: {run:?}"));
    assert!(live.contains(&port), "{port} is not one of {live:?}");
    // The command reaches the service where the service listens.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(lines.next(), Some("web r1 exec"), "{run:?}");
}
