//! Opening the ports a host serves on (SSH, HTTP, HTTPS) in the firewall
//! that guards it: what `gantry agent open-ports` does as root on a host,
//! run by `gantry configure` and again by the agent's systemd unit before
//! each start (nftables rules live in memory and a reboot forgets them).
//!
//! ufw, when active, is asked (`ufw allow`, which keeps its rules across
//! reboots). Otherwise nftables: each base chain on the input hook that can
//! refuse packets (policy drop, or a drop/reject rule) gets one rule at its
//! head accepting the ports, marked with the comment `gantry`; a chain that
//! has it is left alone. A packet must be accepted by every input chain, so
//! the rule goes into each. Hosts filtering with legacy iptables only are
//! reported as unfiltered: their rules are left to their owner.
//!
//! Every check comes before any change: running it again changes nothing.

use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// SSH, HTTP and HTTPS.
pub const PORTS: [u16; 3] = [22, 80, 443];

/// The comment that marks gantry's nftables rule.
const MARK: &str = "gantry";

#[derive(Debug, Serialize)]
pub struct FirewallReport {
    /// `ufw`, `nftables`, or `none` (nothing here filters incoming packets).
    pub firewall: &'static str,
    pub ports: Vec<u16>,
    /// Whether a rule was added.
    pub changed: bool,
    pub detail: String,
}

/// Opens `ports` (TCP) in this machine's firewall. Needs root.
pub fn open_ports(ports: &[u16]) -> Result<FirewallReport, Error> {
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
    let Some(ruleset) = run_if_present("nft", &["-j", "list", "ruleset"])? else {
        return Ok(report(
            "none",
            false,
            "neither ufw nor nft is installed: nothing to open".to_owned(),
        ));
    };
    let ruleset: Value = serde_json::from_str(&ruleset).map_err(|e| {
        failure(format!(
            "`nft -j list ruleset` printed what is not JSON: {e}"
        ))
    })?;
    let chains = filtering_input_chains(&ruleset);
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
/// drop, or a rule whose verdict is drop or reject.
fn filtering_input_chains(ruleset: &Value) -> Vec<Chain> {
    let items = ruleset["nftables"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let str_of = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let same_chain = |rule: &Value, chain: &Value| {
        ["family", "table"].iter().all(|k| rule[*k] == chain[*k]) && rule["chain"] == chain["name"]
    };
    let rules: Vec<&Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| {
            c["hook"] == "input"
                && c["type"] == "filter"
                && ["ip", "ip6", "inet"].contains(&c["family"].as_str().unwrap_or_default())
        })
        .filter_map(|chain| {
            let own: Vec<&&Value> = rules.iter().filter(|r| same_chain(r, chain)).collect();
            let refuses = chain["policy"] == "drop"
                || own.iter().any(|r| {
                    r["expr"].as_array().is_some_and(|exprs| {
                        exprs
                            .iter()
                            .any(|e| e.get("drop").is_some() || e.get("reject").is_some())
                    })
                });
            refuses.then(|| Chain {
                family: str_of(chain, "family"),
                table: str_of(chain, "table"),
                name: str_of(chain, "name"),
                marked: own.iter().any(|r| r["comment"] == MARK),
            })
        })
        .collect()
}

/// Runs a firewall tool: its standard output, or `None` when it is not
/// installed.
fn run_if_present(program: &str, args: &[&str]) -> Result<Option<String>, Error> {
    let output = match Command::new(program).args(args).output() {
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

    #[test]
    fn an_empty_ruleset_filters_nothing() {
        let ruleset: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#,
        )
        .expect("JSON");
        assert!(filtering_input_chains(&ruleset).is_empty());
    }
}
