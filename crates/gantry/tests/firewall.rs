//! `gantry agent open-ports` against a real nftables firewall: the test host
//! is a network namespace (its own ruleset, its own sshd on port 22) reached
//! over a veth link, so a dropped packet and an opened port are seen the way
//! a client sees them. Needs root and nft (CI installs nftables).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gantry_testkit::hosts::{TestHost, TestHosts};
use serde_json::Value;

const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

/// `gantry agent open-ports` run as root on the host: its JSON report.
fn open_ports(host: &TestHost) -> Value {
    let stdout = host.exec_ok(&[GANTRY, "agent", "open-ports", "--output", "json"], "");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// What a client on the bridge sees of a port of the host: `open` (it
/// connects), `closed` (refused: the packet got through, nothing listens)
/// or `dropped` (no answer: the firewall ate it).
fn port(host: &TestHost, port: u16) -> &'static str {
    let addr = SocketAddr::from((host.address, port));
    match TcpStream::connect_timeout(&addr, Duration::from_millis(700)) {
        Ok(_) => "open",
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "closed",
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => "dropped",
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

#[test]
fn open_ports_opens_ssh_http_and_https_in_nftables_once() {
    let hosts = TestHosts::start(1);
    let host = hosts.host("h1");

    // Nothing filters yet: nothing to do.
    let report = open_ports(host);
    assert_eq!(report["firewall"], "none", "{report:#}");
    assert_eq!(report["changed"], false, "{report:#}");

    // A host firewall that drops everything it was not told to accept, and a
    // NAT chain that filters nothing.
    host.exec_ok(
        &["nft", "-f", "-"],
        "table inet filter {
               chain input {
                 type filter hook input priority 0; policy drop;
                 iif lo accept
                 ct state established,related accept
               }
             }
             table ip nat {
               chain prerouting {
                 type nat hook prerouting priority -100;
               }
             }",
    );
    for p in [22, 80, 443] {
        assert_eq!(port(host, p), "dropped", "port {p} before");
    }

    let report = open_ports(host);
    assert_eq!(report["firewall"], "nftables", "{report:#}");
    assert_eq!(report["changed"], true, "{report:#}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("inet filter input"),
        "{report:#}"
    );
    assert_eq!(port(host, 22), "open", "sshd answers");
    assert_eq!(port(host, 80), "closed", "80 gets through");
    assert_eq!(port(host, 443), "closed", "443 gets through");
    // Other ports stay dropped.
    assert_eq!(port(host, 8080), "dropped");

    // Again: nothing changes, and the rule is there once.
    let report = open_ports(host);
    assert_eq!(report["changed"], false, "{report:#}");
    let listed = host.exec_ok(&["nft", "list", "ruleset"], "");
    assert_eq!(
        listed.matches("comment \"gantry\"").count(),
        1,
        "one gantry rule, in the input chain only:\n{listed}"
    );
    assert!(
        listed.contains("tcp dport { 22, 80, 443 } accept comment \"gantry\""),
        "{listed}"
    );
}

#[test]
fn open_ports_opens_ssh_http_and_https_in_iptables_once() {
    let hosts = TestHosts::start(1);
    let host = hosts.host("h1");
    // A host firewall made with iptables: drop what is not accepted.
    for program in ["iptables", "ip6tables"] {
        host.exec_ok(&[program, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"], "");
        host.exec_ok(
            &[
                program,
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            "",
        );
        host.exec_ok(&[program, "-P", "INPUT", "DROP"], "");
    }
    for p in [22, 80] {
        assert_eq!(port(host, p), "dropped", "port {p} before");
    }

    let report = open_ports(host);
    assert_eq!(report["firewall"], "iptables", "{report:#}");
    assert_eq!(report["changed"], true, "{report:#}");
    assert_eq!(port(host, 22), "open", "sshd answers");
    assert_eq!(port(host, 80), "closed", "80 gets through");
    assert_eq!(port(host, 443), "closed", "443 gets through");
    assert_eq!(port(host, 8080), "dropped");

    let report = open_ports(host);
    assert_eq!(report["changed"], false, "{report:#}");
    for program in ["iptables", "ip6tables"] {
        let rules = host.exec_ok(&[program, "-S", "INPUT"], "");
        assert_eq!(
            rules.matches("--comment gantry").count(),
            1,
            "{program}:\n{rules}"
        );
        assert!(
            rules
                .lines()
                .nth(1)
                .is_some_and(|l| l.contains("--comment gantry")),
            "gantry's rule comes first:\n{rules}"
        );
    }
}
