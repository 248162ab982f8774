//! Opening the ports a host serves on (SSH, HTTP, HTTPS) in the firewall
//! that guards it: what `gantry agent open-ports` does as root on a host,
//! run by `gantry configure` and again by the agent's systemd unit before
//! each start (iptables and nftables rules live in memory and a reboot
//! forgets them).
//!
//! In order, the first that filters incoming packets is asked:
//! - ufw, when active (`ufw allow`, which keeps its rules across reboots);
//! - iptables (legacy or over nftables), when its INPUT chain refuses
//!   packets: one rule at its head, `-m comment --comment gantry`, for IPv4
//!   and IPv6;
//! - nftables: each base chain on the input hook that can refuse packets
//!   (policy drop, or a drop/reject verdict anywhere in its table) gets one
//!   rule at its head accepting the ports, marked with the comment `gantry`.
//!   A packet must be accepted by every input chain, so the rule goes into
//!   each. Tables other tools own are left to them: iptables' (handled
//!   above) and firewalld's (reported: open the ports with firewall-cmd).
//!
//! Every check comes before any change: running it again changes nothing.
//! The tools run with `LC_ALL=C`: their messages are parsed.

use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// SSH, HTTP and HTTPS.
pub const PORTS: [u16; 3] = [22, 80, 443];

/// The comment that marks gantry's rules.
const MARK: &str = "gantry";

#[derive(Debug, Serialize)]
pub struct FirewallReport {
    /// `ufw`, `iptables`, `nftables`, `firewalld` (left alone: the detail
    /// says what to do), or `none` (nothing here filters incoming packets).
    pub firewall: &'static str,
    pub ports: Vec<u16>,
    /// Whether a rule was added.
    pub changed: bool,
    pub detail: String,
}

/// Opens `ports` (TCP) in this machine's firewall. Needs root.
pub fn open_ports(ports: &[u16]) -> Result<FirewallReport, Error> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() != 0) {
        return Err(failure(
            "opening ports in the firewall needs root: run it as root or through sudo".to_owned(),
        ));
    }
    let list = ports_list(ports);
    let report = |firewall, changed, detail: String| FirewallReport {
        firewall,
        ports: ports.to_vec(),
        changed,
        detail,
    };
    if let Some(status) = run_if_present("ufw", &["status"])?
        && status.contains("Status: active")
    {
        let mut added = Vec::new();
        for port in ports {
            let said = run("ufw", &["allow", &format!("{port}/tcp")])?;
            if said.contains("added") || said.contains("updated") {
                added.push(port.to_string());
            }
        }
        let detail = if added.is_empty() {
            format!("ufw already allows {list}/tcp")
        } else {
            format!("ufw now allows {}/tcp", added.join(", "))
        };
        return Ok(report("ufw", !added.is_empty(), detail));
    }
    let mut opened = Vec::new();
    let mut filtering = Vec::new();
    for program in ["iptables", "ip6tables"] {
        let opened_here = match open_in_iptables(program, ports) {
            // A kernel without IPv6 has no ip6tables to open.
            Err(_) if program == "ip6tables" => None,
            other => other?,
        };
        if let Some(added) = opened_here {
            filtering.push(program);
            if added {
                opened.push(program);
            }
        }
    }
    if !filtering.is_empty() {
        let detail = if opened.is_empty() {
            format!("{} already accept {list}/tcp", filtering.join(" and "))
        } else {
            format!("{} now accept {list}/tcp", opened.join(" and "))
        };
        return Ok(report("iptables", !opened.is_empty(), detail));
    }
    let Some(ruleset) = run_if_present("nft", &["-j", "list", "ruleset"])? else {
        return Ok(report(
            "none",
            false,
            "neither ufw, iptables nor nft filters here: nothing to open".to_owned(),
        ));
    };
    let ruleset: Value = serde_json::from_str(&ruleset).map_err(|e| {
        failure(format!(
            "`nft -j list ruleset` printed what is not JSON: {e}"
        ))
    })?;
    let chains = filtering_input_chains(&ruleset);
    if chains.iter().any(|c| c.table == "firewalld") {
        return Ok(report(
            "firewalld",
            false,
            format!(
                "firewalld manages this firewall: `firewall-cmd --permanent --add-port=PORT/tcp` for {list}, then `firewall-cmd --reload`"
            ),
        ));
    }
    if chains.is_empty() {
        return Ok(report(
            "none",
            false,
            "no nftables input chain refuses packets: nothing to open".to_owned(),
        ));
    }
    let mut opened = Vec::new();
    for chain in chains.iter().filter(|c| !c.marked) {
        let ports = format!("{{ {list} }}");
        run(
            "nft",
            &[
                "insert",
                "rule",
                &chain.family,
                &chain.table,
                &chain.name,
                "tcp",
                "dport",
                &ports,
                "accept",
                "comment",
                &format!("\"{MARK}\""),
            ],
        )?;
        opened.push(chain.to_string());
    }
    let detail = if opened.is_empty() {
        format!(
            "nftables already accepts {list}/tcp in {}",
            names(chains.iter())
        )
    } else {
        format!("nftables now accepts {list}/tcp in {}", opened.join(", "))
    };
    Ok(report("nftables", !opened.is_empty(), detail))
}

/// Opens `ports` in `program`'s (iptables or ip6tables) INPUT chain when it
/// refuses packets. `None`: it does not (or is not installed); else whether
/// a rule was added.
fn open_in_iptables(program: &str, ports: &[u16]) -> Result<Option<bool>, Error> {
    let Some(rules) = run_if_present(program, &["-w", "-S", "INPUT"])? else {
        return Ok(None);
    };
    let refuses = rules
        .lines()
        .any(|l| l == "-P INPUT DROP" || l.ends_with(" -j DROP") || l.contains(" -j REJECT"));
    if !refuses {
        return Ok(None);
    }
    if rules
        .lines()
        .any(|l| l.contains(&format!("--comment {MARK} ")))
    {
        return Ok(Some(false));
    }
    let dports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    run(
        program,
        &[
            "-w",
            "-I",
            "INPUT",
            "1",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &dports,
            "-m",
            "comment",
            "--comment",
            MARK,
            "-j",
            "ACCEPT",
        ],
    )?;
    Ok(Some(true))
}

fn ports_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn names<'a>(chains: impl Iterator<Item = &'a Chain>) -> String {
    chains.map(Chain::to_string).collect::<Vec<_>>().join(", ")
}

/// A base chain on the input hook that can refuse packets.
#[derive(Debug, PartialEq)]
struct Chain {
    family: String,
    table: String,
    name: String,
    /// Whether gantry's rule is already in it.
    marked: bool,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.name)
    }
}

/// The input chains of `nft -j list ruleset` that refuse something: policy
/// drop, or a drop/reject verdict anywhere in their table (in a rule of
/// their own, a chain they jump to, or a verdict map). Chains iptables owns
/// (its tables `filter` with chain `INPUT`) are left to iptables.
fn filtering_input_chains(ruleset: &Value) -> Vec<Chain> {
    let items = ruleset["nftables"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let str_of = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let same_table = |rule: &Value, chain: &Value| {
        rule["family"] == chain["family"] && rule["table"] == chain["table"]
    };
    let rules: Vec<&Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| {
            c["hook"] == "input"
                && c["type"] == "filter"
                && ["ip", "ip6", "inet"].contains(&c["family"].as_str().unwrap_or_default())
                && !(c["table"] == "filter" && c["name"] == "INPUT")
        })
        .filter_map(|chain| {
            let table: Vec<&&Value> = rules.iter().filter(|r| same_table(r, chain)).collect();
            let refuses = chain["policy"] == "drop" || table.iter().any(|r| refusal(&r["expr"]));
            refuses.then(|| Chain {
                family: str_of(chain, "family"),
                table: str_of(chain, "table"),
                name: str_of(chain, "name"),
                marked: table
                    .iter()
                    .any(|r| r["chain"] == chain["name"] && r["comment"] == MARK),
            })
        })
        .collect()
}

/// Whether a drop or reject verdict appears anywhere in `value`.
fn refusal(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(key, inner)| key == "drop" || key == "reject" || refusal(inner)),
        Value::Array(items) => items.iter().any(refusal),
        _ => false,
    }
}

/// Runs a firewall tool: its standard output, or `None` when it is not
/// installed.
fn run_if_present(program: &str, args: &[&str]) -> Result<Option<String>, Error> {
    let output = match Command::new(program).args(args).env("LC_ALL", "C").output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failure(format!("cannot run {program}: {e}"))),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failure(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            stderr.trim().lines().last().unwrap_or("no message")
        )));
    }
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    run_if_present(program, args)?
        .ok_or_else(|| failure(format!("{program} is no longer installed")))
}

fn failure(message: String) -> Error {
    Error::ConfigureFailed {
        host: crate::environment::hostname(),
        step: "open ports".to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` of nftables 1.0.6 (Debian 12) after a first
    /// `gantry agent open-ports`: an inet input chain with policy drop that
    /// has gantry's rule, a forward chain, a nat chain, an ip6 input chain
    /// with a reject rule, and an input chain that refuses nothing.
    const RULESET: &str = include_str!("testdata/nft-ruleset.json");

    #[test]
    fn only_input_chains_that_refuse_packets_get_the_rule() {
        let ruleset: Value = serde_json::from_str(RULESET).expect("the recorded ruleset is JSON");
        let chains = filtering_input_chains(&ruleset);
        let chain = |family: &str, table: &str, marked| Chain {
            family: family.to_owned(),
            table: table.to_owned(),
            name: "input".to_owned(),
            marked,
        };
        assert_eq!(
            chains,
            vec![chain("inet", "filter", true), chain("ip6", "guard", false)]
        );
        assert_eq!(chains[1].to_string(), "ip6 guard input");
    }

    /// nftables 1.0.6 after `iptables -P INPUT DROP` (iptables over
    /// nftables: table ip filter, chain INPUT), an inet input chain that
    /// jumps to a chain that drops, and an ip6 chain with a verdict map.
    const JUMPS: &str = include_str!("testdata/nft-ruleset-jumps.json");

    #[test]
    fn drops_behind_jumps_and_maps_count_and_iptables_keeps_its_own() {
        let ruleset: Value = serde_json::from_str(JUMPS).expect("the recorded ruleset is JSON");
        let names: Vec<String> = filtering_input_chains(&ruleset)
            .iter()
            .map(Chain::to_string)
            .collect();
        assert_eq!(names, ["inet fw input", "ip6 maps input"]);
    }

    #[test]
    fn an_empty_ruleset_filters_nothing() {
        let ruleset: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#,
        )
        .expect("JSON");
        assert!(filtering_input_chains(&ruleset).is_empty());
    }
}
