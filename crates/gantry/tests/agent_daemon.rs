//! The agent as a process: one per state directory, a clean stop on SIGTERM
//! that leaves the services running, and a new agent that adopts them.

mod agent_support;

use std::process::Command;

use agent_support::{
    AgentProcess, DEADLINE, alive, assert_web_answers, deploy, hello, instances, json, pids,
    service, shell, status, wait_for_status,
};

#[test]
fn a_second_agent_on_the_same_state_directory_refuses_and_names_the_pid_holding_it() {
    let p = shell("second-agent", "");
    let first = AgentProcess::start(&p);

    let second = p.gantry(&["agent", "--output", "json"]);
    second.expect_code(4);
    let error = &second.json()["error"];
    assert_eq!(error["code"], "agent.locked", "{error:#}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("pid {}", first.pid())),
        "names the holder {}: {message}",
        first.pid()
    );
    assert!(error["hint"].as_str().is_some(), "{error:#}");

    let text = p.gantry(&["agent", "--output", "text"]);
    text.expect_code(4);
    assert!(
        text.stderr.contains(&format!("pid {}", first.pid())),
        "{}",
        text.stderr
    );
    assert!(
        p.state_dir().join("agent.sock").exists(),
        "the first agent still serves"
    );
    assert!(alive(first.pid()));
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_leaves_the_services_running() {
    let p = hello("agent-sigterm", "1");
    let mut agent = AgentProcess::start(&p);
    deploy(&p);
    let before = status(&p);
    let running: Vec<u32> = ["web", "worker"]
        .iter()
        .flat_map(|s| pids(service(&before, s)))
        .collect();

    let kill = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let exit = agent.wait(DEADLINE);
    assert!(exit.success(), "the agent exits 0 on SIGTERM: {exit}");
    assert!(
        !p.state_dir().join("agent.sock").exists(),
        "the socket is removed"
    );

    for pid in &running {
        assert!(alive(*pid), "service pid {pid} outlives the agent");
    }
    assert_web_answers(service(&before, "web"), "1");

    // A new agent (started by this command) takes over, and can stop them.
    let stopped = json(&p, &["stop"]);
    assert_eq!(service(&stopped, "web")["state"], "stopped", "{stopped:#}");
    for pid in running {
        assert!(!alive(pid), "pid {pid} stopped by the next agent");
    }
}

#[test]
fn a_restarted_agent_adopts_the_running_services_and_keeps_supervising_them() {
    let p = hello("agent-adopt", "1");
    deploy(&p);
    let before = status(&p);
    assert_eq!(json(&p, &["agent", "stop"])["stopped"], true);
    assert!(!p.state_dir().join("agent.sock").exists());
    assert_eq!(
        json(&p, &["agent", "stop"])["stopped"],
        false,
        "none left to stop"
    );

    // `status` starts a new agent, which finds the same processes.
    let after = status(&p);
    for name in ["web", "worker"] {
        let (was, now) = (service(&before, name), service(&after, name));
        assert_eq!(now["state"], "running", "{now:#}");
        assert_eq!(now["release"], "r1", "{now:#}");
        assert_eq!(pids(now), pids(was), "{name} keeps its processes");
        assert!(
            instances(now).iter().all(|i| i["healthy"] == true),
            "{now:#}"
        );
    }
    assert_web_answers(service(&after, "web"), "1");

    // The new agent supervises them: a killed worker is started again.
    let worker = pids(service(&after, "worker"))[0];
    let kill = Command::new("kill")
        .args(["-KILL", &worker.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let restarted = wait_for_status(&p, "the worker to be restarted", |s| {
        let w = service(s, "worker");
        w["state"] == "running" && pids(w).first().is_some_and(|pid| *pid != worker)
    });
    let w = &instances(service(&restarted, "worker"))[0];
    assert_eq!(w["restarts"], 1, "{w:#}");
    assert_eq!(w["last_exit"]["signal"], 9, "{w:#}");

    let web = pids(service(&after, "web"));
    json(&p, &["stop"]);
    for pid in web {
        assert!(!alive(pid), "adopted web pid {pid} stopped");
    }
}

#[test]
fn the_agent_log_is_rotated_by_size_and_keeps_a_bounded_number_of_files() {
    let p = shell("agent-log", "[services.web]\nrun = \"exec sleep 600\"\n");
    let dir = p.state_dir().to_owned();
    let log = |n: u32| match n {
        0 => dir.join("agent.log"),
        n => dir.join(format!("agent.log.{n}")),
    };
    // A log already past the cap (8 MiB), and every rotation slot taken.
    let full = "an old line of the agent's log\n".repeat((9 << 20) / 31);
    std::fs::write(log(0), &full).expect("write agent.log");
    for n in 1..=3 {
        std::fs::write(log(n), format!("rotation {n}\n")).expect("write a rotation");
    }
    deploy(&p);
    p.gantry(&["stop"]).expect_code(0);

    let size = |n| std::fs::metadata(log(n)).map_or(0, |m| m.len());
    gantry_testkit::wait_for("agent.log to be rotated", DEADLINE, || {
        size(1) >= full.len() as u64 && size(0) > 0
    });
    assert!(
        size(0) < 8 << 20,
        "agent.log starts over: {} bytes",
        size(0)
    );
    assert_eq!(
        std::fs::read_to_string(log(2)).expect("read .2"),
        "rotation 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(log(3)).expect("read .3"),
        "rotation 2\n"
    );
    assert!(!log(4).exists(), "no more than 3 rotations are kept");
}
