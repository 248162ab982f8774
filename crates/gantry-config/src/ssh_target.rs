//! The `ssh` address of a host, `[user@]address[:port]`: the one parser of
//! that grammar, used by validation, `register --ssh` and the SSH transport.
//!
//! The parts end up as arguments of the user's `ssh` (and in `%r`/`%h` of
//! their ProxyCommand), so the grammar is narrow: no part may start with `-`
//! (ssh would read it as an option), and names carry no shell or control
//! characters.

use std::net::Ipv6Addr;

/// `[user@]address[:port]`, or a name from `~/.ssh/config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    /// A host name, an IPv4 address, or an IPv6 address (without brackets).
    pub address: String,
    pub port: Option<u16>,
}

/// Longer than any host name (253) with a user and a port.
const MAX_LEN: usize = 320;

impl SshTarget {
    /// Splits the user on the last `@` (as OpenSSH does); an IPv6 address
    /// takes a port only in brackets: `root@[2001:db8::1]:22`.
    pub fn parse(text: &str) -> Result<SshTarget, String> {
        if text.len() > MAX_LEN {
            return Err(format!(
                "the ssh address is longer than {MAX_LEN} characters"
            ));
        }
        let (user, rest) = match text.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, text),
        };
        if let Some(user) = user {
            check_part(text, "user", user, |c| {
                c.is_ascii_alphanumeric() || "._-@+".contains(c)
            })?;
        }
        let (address, port) = split_port(text, rest)?;
        if address.parse::<Ipv6Addr>().is_err() {
            check_part(text, "address", address, |c| {
                c.is_ascii_alphanumeric() || "._-".contains(c)
            })?;
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port number"))?,
            ),
            None => None,
        };
        Ok(SshTarget {
            user: user.map(str::to_owned),
            address: address.to_owned(),
            port,
        })
    }

    /// As `ssh` takes it after `--`: `user@address`, or the bare name.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.address),
            None => self.address.clone(),
        }
    }
}

/// `address[:port]`, `[v6]`, `[v6]:port`, or a bare IPv6 address.
fn split_port<'a>(text: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), String> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (address, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: an IPv6 address in [ ] lacks its `]`"))?;
        if address.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{address}` in `{text}` is not an IPv6 address"));
        }
        return match after.strip_prefix(':') {
            Some(port) => Ok((address, Some(port))),
            None if after.is_empty() => Ok((address, None)),
            None => Err(format!("`{text}`: unexpected `{after}` after the address")),
        };
    }
    if rest.parse::<Ipv6Addr>().is_ok() {
        return Ok((rest, None));
    }
    Ok(match rest.split_once(':') {
        Some((address, port)) => (address, Some(port)),
        None => (rest, None),
    })
}

fn check_part(text: &str, what: &str, part: &str, allowed: fn(char) -> bool) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("`{text}` has an empty {what}"));
    }
    if part.starts_with('-') {
        return Err(format!(
            "the {what} in `{text}` starts with `-`, which ssh would take as an option"
        ));
    }
    match part.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!("the {what} in `{text}` contains {}", shown(c))),
        None => Ok(()),
    }
}

/// A character as a message shows it: control characters escaped.
fn shown(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("the character {}", c.escape_default())
    } else {
        format!("`{c}`")
    }
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.address.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.address),
            (false, Some(port)) => write!(f, "{}:{port}", self.address),
            (_, None) => f.write_str(&self.address),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SshTarget {
        SshTarget::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn targets_parse() {
        let t = parse("deploy@10.0.0.5:2222");
        assert_eq!(t.user.as_deref(), Some("deploy"));
        assert_eq!(t.address, "10.0.0.5");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.to_string(), "deploy@10.0.0.5:2222");
        let t = parse("web1");
        assert_eq!((t.user, t.address.as_str(), t.port), (None, "web1", None));
        let t = parse("root@[2001:db8::1]:22");
        assert_eq!((t.address.as_str(), t.port), ("2001:db8::1", Some(22)));
        assert_eq!(t.to_string(), "root@[2001:db8::1]:22");
        assert_eq!(parse("2001:db8::1").address, "2001:db8::1");
        assert_eq!(parse("[::1]").port, None);
        // The last `@` ends the user, as in OpenSSH.
        let t = parse("first.last@corp@bastion");
        assert_eq!(t.user.as_deref(), Some("first.last@corp"));
        assert_eq!(t.address, "bastion");
        // `+` is common in CI accounts and means nothing to ssh after `--`.
        assert_eq!(parse("ci+deploy@web1").user.as_deref(), Some("ci+deploy"));
    }

    #[test]
    fn targets_that_are_not_addresses_are_refused() {
        for bad in [
            "",
            "@host",
            "user@",
            "host:0",
            "host:ssh",
            "deploy@host:ssh",
            "host name",
            "a/b",
            "[2001:db8::1",
            "[nothost]:22",
            "host\n",
            "user;reboot@host",
            "$(id)@host",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SshTarget::parse(&"a".repeat(400)).is_err());
    }

    #[test]
    fn targets_that_ssh_would_read_as_options_are_refused() {
        for bad in [
            "-oProxyCommand=touch@x",
            "-oProxyCommand=sh",
            "user@-oProxyCommand=sh",
            "-p22",
        ] {
            let said = SshTarget::parse(bad).unwrap_err();
            assert!(said.contains("starts with `-`"), "{bad}: {said}");
        }
    }
}
