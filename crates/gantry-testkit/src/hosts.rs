//! Real remote hosts for tests, on this machine: each host is a network
//! namespace with its own address on a bridge, its own sshd (from Debian's
//! openssh-server) accepting one test key, its own Unix user and home (so its
//! agent's state is its own) and its own /tmp (a private mount). The tests
//! reach them the way users reach servers: OpenSSH with a config file
//! (`GANTRY_SSH_CONFIG`) naming each host.
//!
//! Needs root (namespaces, users, sshd); `.ci/run` runs as root and installs
//! openssh-server. Everything is removed on drop: processes of the host
//! users, sshd, the namespaces, links, users and files.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub struct TestHosts {
    /// Host directories, keys and the ssh config; removed on drop.
    root: tempfile::TempDir,
    bridge: String,
    pub hosts: Vec<TestHost>,
    /// An OpenSSH client config naming every host (`h1`, `h2`, ...).
    pub ssh_config: PathBuf,
    /// The private half of the key every host accepts.
    pub key: PathBuf,
}

pub struct TestHost {
    /// The name in the ssh config and in gantry.toml: `h1`, `h2`, ...
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    pub user: String,
    pub home: PathBuf,
    dir: PathBuf,
    link: String,
    sshd: Option<Child>,
}

/// Makes an ed25519 key pair at `path` (and `path.pub`), protected by
/// `passphrase` (empty: none).
pub(crate) fn keygen(path: &Path, passphrase: &str) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            "gantry-test",
            "-f",
            &s(path),
        ],
    );
}

/// Runs a setup command; panics with its stderr when it fails.
pub(crate) fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl TestHosts {
    /// Starts `count` hosts. Panics with what is missing when it cannot.
    pub fn start(count: usize) -> TestHosts {
        assert!(
            nix_is_root(),
            "these tests make network namespaces and users: run them as root (CI does)"
        );
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install openssh-server openssh-client"
            );
        }
        let seq = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Unique among the test processes running now: interface names
        // stay within 15 bytes for pids up to 0x3fffff.
        let id = format!("{pid:x}{:02x}", seq & 0xff);
        let root = tempfile::Builder::new()
            .prefix("gantry-hosts-")
            .tempdir_in("/var/tmp")
            .expect("create the hosts' directory");
        chmod(root.path(), 0o755);
        let key = root.path().join("id_test");
        keygen(&key, "");
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        let bridge = format!("gt{id}b");
        quiet("ip", &["link", "del", &bridge]);
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let net = take_subnet(&bridge);
        run("ip", &["link", "set", &bridge, "up"]);
        // Hosts reach each other across the bridge, which a FORWARD policy
        // of DROP (Docker's, with br_netfilter) would stop.
        quiet("iptables", &forward_rule("-I", &bridge));

        let mut hosts = TestHosts {
            ssh_config: root.path().join("ssh_config"),
            key,
            root,
            bridge,
            hosts: Vec::new(),
        };
        let mut config = String::new();
        for i in 1..=count {
            let host = TestHost::create(&hosts, &id, net, i);
            config.push_str(&format!(
                "Host {name}\n  HostName {address}\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n\n",
                name = host.name,
                address = host.address,
                user = host.user,
                key = hosts.key.display(),
                known = hosts.root.path().join("known_hosts").display(),
            ));
            hosts.hosts.push(host);
        }
        std::fs::write(&hosts.ssh_config, config).expect("write the ssh config");
        for host in &mut hosts.hosts {
            host.start_sshd();
        }
        hosts
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }

    pub fn host_mut(&mut self, name: &str) -> &mut TestHost {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }

    /// A key no host accepts, for the refused-key test.
    pub fn stranger_key(&self) -> PathBuf {
        let key = self.root.path().join("id_stranger");
        if !key.exists() {
            keygen(&key, "");
        }
        key
    }

    /// A key protected by `passphrase` that every host accepts (its public
    /// half is added to each host's authorized keys).
    pub fn passphrase_key(&self, passphrase: &str) -> PathBuf {
        let key = self.root.path().join("id_passphrase");
        keygen(&key, passphrase);
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("read the key");
        for host in &self.hosts {
            let keys = host.dir.join("authorized_keys");
            let mut text = std::fs::read_to_string(&keys).expect("read authorized_keys");
            text.push_str(&public);
            std::fs::write(&keys, text).expect("write authorized_keys");
        }
        key
    }

    /// Where test files go that should vanish with the hosts.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Writes an ssh config like `ssh_config` but offering `key` instead.
    pub fn ssh_config_with_key(&self, key: &Path) -> PathBuf {
        let text = std::fs::read_to_string(&self.ssh_config).expect("read the ssh config");
        let path = self.root.path().join("ssh_config_other_key");
        std::fs::write(&path, text.replace(&s(&self.key), &s(key))).expect("write the ssh config");
        path
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.remove();
        }
        quiet("iptables", &forward_rule("-D", &self.bridge));
        quiet("ip", &["link", "del", &self.bridge]);
    }
}

/// Gives `bridge` the first `10.a.b.0/24` (a from 100 to 199) that no
/// address or route of this machine is in yet, and answers `(a, b)`. Other
/// test processes (and hosts a killed run left) may hold subnets too: the
/// choice and the address are made under a lock they all take.
fn take_subnet(bridge: &str) -> (u8, u8) {
    let _lock = crate::rootfs::lock("hosts-subnet");
    let mut taken = String::new();
    for what in ["addr", "route"] {
        let output = std::process::Command::new("ip")
            .args(["-4", "-o", what, "show"])
            .output()
            .expect("run ip");
        assert!(output.status.success(), "ip -4 -o {what} show failed");
        taken.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    let used = |a: u8, b: u8| {
        let prefix = format!("10.{a}.{b}.");
        taken
            .split_whitespace()
            .any(|word| word.starts_with(&prefix))
    };
    let (a, b) = (100..200u8)
        .flat_map(|a| (0..=255u8).map(move |b| (a, b)))
        .find(|&(a, b)| !used(a, b))
        .expect("a free /24 in 10.100.0.0-10.199.255.0");
    run(
        "ip",
        &["addr", "add", &format!("10.{a}.{b}.1/24"), "dev", bridge],
    );
    (a, b)
}

/// The iptables arguments that add (`-I`) or remove (`-D`) the rule letting
/// packets between the hosts of `bridge` through.
fn forward_rule<'a>(action: &'a str, bridge: &'a str) -> [&'a str; 9] {
    [
        "-w", action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
    ]
}

impl TestHost {
    fn create(hosts: &TestHosts, id: &str, net: (u8, u8), i: usize) -> TestHost {
        let name = format!("h{i}");
        let namespace = format!("gt{id}h{i}");
        let link = format!("gt{id}v{i}");
        let peer = format!("gt{id}p{i}");
        let address = Ipv4Addr::new(10, net.0, net.1, 10 + i as u8);
        let user = format!("gt{id}u{i}");
        let dir = hosts.root.path().join(&name);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("create the host's home");
        chmod(&dir, 0o755);

        quiet("ip", &["netns", "del", &namespace]);
        quiet("ip", &["link", "del", &link]);
        quiet("userdel", &["-f", &user]);
        run("ip", &["netns", "add", &namespace]);
        run(
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
        );
        run("ip", &["link", "set", &peer, "netns", &namespace]);
        run("ip", &["link", "set", &link, "master", &hosts.bridge, "up"]);
        run(
            "ip",
            &[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &peer,
            ],
        );
        run("ip", &["-n", &namespace, "link", "set", &peer, "up"]);
        run("ip", &["-n", &namespace, "link", "set", "lo", "up"]);

        run(
            "useradd",
            &["-M", "-d", &s(&home), "-s", "/bin/sh", "-U", &user],
        );
        // `*`, not the `!` useradd leaves: sshd refuses keys for locked accounts.
        run("usermod", &["-p", "*", &user]);
        run("chown", &["-R", &format!("{user}:{user}"), &s(&home)]);
        chmod(&home, 0o700);

        let host_key = dir.join("ssh_host_ed25519_key");
        keygen(&host_key, "");
        let public =
            std::fs::read_to_string(hosts.key.with_extension("pub")).expect("read the test key");
        std::fs::write(dir.join("authorized_keys"), public).expect("write authorized_keys");
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port 22\nListenAddress {address}\nHostKey {host_key}\nPidFile {pid}\nAuthorizedKeysFile {keys}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowUsers {user}\nSubsystem sftp internal-sftp\n",
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                keys = dir.join("authorized_keys").display(),
            ),
        )
        .expect("write sshd_config");
        TestHost {
            name,
            namespace,
            address,
            user,
            home,
            dir,
            link,
            sshd: None,
        }
    }

    /// Starts this host's sshd in its namespace, with a /tmp of its own, and
    /// waits until it accepts connections.
    pub fn start_sshd(&mut self) {
        let script = format!(
            "mount -t tmpfs -o mode=1777 tmpfs /tmp && exec /usr/sbin/sshd -D -e -f {}",
            self.dir.join("sshd_config").display()
        );
        let log = std::fs::File::create(self.dir.join("sshd.log")).expect("create sshd.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.sshd = Some(child);
        let addr = SocketAddr::from((self.address, 22));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd of {} did not start: {}",
                self.name,
                std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets `name=value` in every later SSH session's environment (sshd's
    /// `SetEnv`; sshd restarts), so an agent that `gantry agent connect`
    /// starts has it, as a server's administrator would arrange.
    pub fn set_session_env(&mut self, name: &str, value: &str) {
        let config = self.dir.join("sshd_config");
        let mut text = std::fs::read_to_string(&config).expect("read sshd_config");
        text.push_str(&format!("SetEnv {name}={value}\n"));
        std::fs::write(&config, text).expect("write sshd_config");
        self.stop_sshd();
        self.start_sshd();
    }

    pub fn stop_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            quiet("kill", &[pid.trim()]);
        }
    }

    /// Gives the host a new SSH host key, as a reinstalled server has: every
    /// process of the host ends (open SSH connections with them), sshd comes
    /// back with the new key.
    pub fn change_host_key(&mut self) {
        self.stop_sshd();
        self.kill_all();
        let host_key = self.dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&host_key);
        let _ = std::fs::remove_file(host_key.with_extension("pub"));
        keygen(&host_key, "");
        self.start_sshd();
    }

    /// Runs `args` as root inside the host's network namespace (not over
    /// SSH: its firewall, say), with `input` on its stdin: its stdout.
    /// Panics with its stderr when it fails.
    pub fn exec_ok(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {args:?} on {}: {e}", self.name));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .expect("write to its stdin");
        }
        let output = child.wait_with_output().expect("wait for it");
        assert!(
            output.status.success(),
            "`{}` on {} failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Cuts the host's network link (`ip link set ... down`).
    pub fn cut(&self) {
        run("ip", &["link", "set", &self.link, "down"]);
    }

    pub fn restore(&self) {
        run("ip", &["link", "set", &self.link, "up"]);
    }

    /// Slows what is sent to the host to `kbit` kilobits a second (`tc`'s
    /// token bucket on its link), so that an upload takes long enough to be
    /// cut in its middle.
    pub fn limit_rate(&self, kbit: u32) {
        run(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &self.link,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
        );
    }

    /// Lifts `limit_rate`.
    pub fn unlimit_rate(&self) {
        quiet("tc", &["qdisc", "del", "dev", &self.link, "root"]);
    }

    /// How many bytes of blob `digest` an unfinished upload left on the
    /// host (a file of that name under a `partial` directory), if any.
    pub fn partial_upload(&self, digest: &str) -> Option<u64> {
        self.partial_uploads()
            .into_iter()
            .find(|(name, _)| name == digest)
            .map(|(_, len)| len)
    }

    /// Every blob an unfinished upload left on the host: its digest (the
    /// file's name under a `partial` directory) and the bytes it holds.
    pub fn partial_uploads(&self) -> Vec<(String, u64)> {
        fn walk(dir: &Path, inside: bool, found: &mut Vec<(String, u64)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let name = entry.file_name();
                if kind.is_dir() {
                    walk(&entry.path(), inside || name == "partial", found);
                } else if inside && let Ok(meta) = entry.metadata() {
                    found.push((name.to_string_lossy().into_owned(), meta.len()));
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.home, false, &mut found);
        found
    }

    /// Puts `bin` at ~/.gantry/bin/gantry on the host, as `configure` would.
    pub fn install_gantry(&self, bin: &Path) {
        let target = self.home.join(".gantry/bin");
        std::fs::create_dir_all(&target).expect("create ~/.gantry/bin");
        // The copy `gantry configure` ships: without debug info, made the
        // same way (strip, else objcopy), so configure finds it current
        // and sends nothing.
        let out = target.join("gantry");
        let stripped = std::process::Command::new("strip")
            .args([
                OsStr::new("--strip-debug"),
                OsStr::new("-o"),
                out.as_os_str(),
                bin.as_os_str(),
            ])
            .status()
            .is_ok_and(|s| s.success())
            || std::process::Command::new("objcopy")
                .args([
                    OsStr::new("--strip-debug"),
                    bin.as_os_str(),
                    out.as_os_str(),
                ])
                .status()
                .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(bin, &out).expect("copy gantry");
        }
        run(
            "chown",
            &[
                "-R",
                &format!("{0}:{0}", self.user),
                &s(&self.home.join(".gantry")),
            ],
        );
    }

    /// Adds the host's user to the group `docker`, so that its agent
    /// reaches a Docker engine's socket, as `gantry configure` arranges.
    pub fn join_docker_group(&self) {
        run("usermod", &["-aG", "docker", &self.user]);
    }

    /// A plain HTTP GET from inside the host (its own loopback): status and body.
    pub fn http_get(
        &self,
        port: u16,
        host_header: &str,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        self.http_request(port, host_header, "GET", path)
    }

    /// `METHOD path` with an empty body from inside the host (its own
    /// loopback), on a new connection: status and body.
    pub fn http_request(
        &self,
        port: u16,
        host_header: &str,
        method: &str,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let namespace = format!("/run/netns/{}", self.namespace);
        let host_header = host_header.to_owned();
        let (method, path) = (method.to_owned(), path.to_owned());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&namespace)?;
            enter_netns(&ns).map_err(std::io::Error::from)?;
            crate::http_request_host(port, &host_header, &method, &path)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the request thread panicked")))
    }

    /// Live processes of the host's user (zombies left: they run nothing), as `ps` sees them.
    pub fn processes(&self) -> Vec<String> {
        let output = Command::new("ps")
            .args(["-u", &self.user, "-o", "stat=,args="])
            .output()
            .expect("run ps");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.trim_start().split_once(' '))
            .filter(|(stat, _)| !stat.starts_with('Z'))
            .map(|(_, args)| args.trim().to_owned())
            .collect()
    }

    /// Kills every process in the host's network namespace.
    pub fn kill_all(&self) {
        let output = Command::new("ip")
            .args(["netns", "pids", &self.namespace])
            .output()
            .expect("run ip netns pids");
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            quiet("kill", &["-KILL", pid]);
        }
    }

    fn remove(&mut self) {
        self.kill_all();
        quiet("pkill", &["-KILL", "-u", &self.user]);
        self.stop_sshd();
        // Processes may be starting as the first ones die.
        std::thread::sleep(Duration::from_millis(50));
        quiet("pkill", &["-KILL", "-u", &self.user]);
        quiet("ip", &["netns", "del", &self.namespace]);
        quiet("ip", &["link", "del", &self.link]);
        quiet("userdel", &["-f", &self.user]);
    }
}

fn enter_netns(ns: &std::fs::File) -> nix::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub(crate) fn s(path: &Path) -> String {
    path.display().to_string()
}
