//! A Docker Engine of a test's own: a dockerd with its own data root, exec
//! root, pidfile and socket. A dockerd manages the bridge `docker0` and the
//! iptables rules where it runs, and the machine's own engine must keep its
//! own: so an engine of a test's runs inside a network namespace that is not
//! the machine's, or beside the machine's engine with neither.
//!
//! Three uses: the user's machine whose engine only builds
//! ([`Dockerd::isolated`]: a namespace of its own, no bridge), a test
//! host's engine ([`Dockerd::in_namespace`]: inside the host's namespace,
//! with its bridge and rules, as on a server; its socket group `docker`),
//! and a bench's engine with another storage driver
//! ([`Dockerd::beside_machine`]: the machine's namespace, no bridge, no
//! rules).
//! Stopped on drop, its containers removed first; its files go with it.
//!
//! Needs root and Docker's `dockerd` (Debian's docker.io).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dockerd {
    dir: tempfile::TempDir,
    daemon: Child,
    /// A bridge made for it, deleted after it stops.
    bridge: Option<&'static str>,
}

/// The default bridge of [`Dockerd::beside_machine`]'s engine, and its
/// address.
const BESIDE_BRIDGE: (&str, &str) = ("gantrybench0", "10.214.0.1/24");

impl Dockerd {
    /// An engine in a network namespace of its own, without networks:
    /// enough to build and hold images.
    pub fn isolated() -> Dockerd {
        Dockerd::start(
            &["unshare", "--net"],
            &["--bridge", "none", "--iptables=false", "--ip-masq=false"],
        )
    }

    /// An engine in the network namespace `namespace` (`ip netns`'s name),
    /// with the default bridge and iptables rules there, its socket
    /// reachable by the group `docker`.
    pub fn in_namespace(namespace: &str) -> Dockerd {
        let net = format!("--net=/run/netns/{namespace}");
        Dockerd::start(&["nsenter", &net, "--"], &["--group", "docker"])
    }

    /// An engine beside the machine's, in its network namespace, storing
    /// images and containers with `storage_driver` (`overlay2`, where the
    /// machine's engine uses another). It touches neither the machine's
    /// bridge nor its iptables rules: its default bridge is one of its own
    /// (a dockerd told `--bridge none` deletes `docker0`), it writes no
    /// rules (so its containers reach no outside network, and it builds
    /// nothing that needs one), its networks' addresses come from
    /// 10.213.0.0/16. Its published ports are on this machine's loopback,
    /// as the machine engine's are. For a bench that compares storage
    /// drivers.
    pub fn beside_machine(storage_driver: &str) -> Dockerd {
        let (bridge, address) = BESIDE_BRIDGE;
        let _ = Command::new("ip")
            .args(["link", "del", bridge])
            .stderr(Stdio::null())
            .status();
        crate::hosts::run("ip", &["link", "add", bridge, "type", "bridge"]);
        crate::hosts::run("ip", &["addr", "add", address, "dev", bridge]);
        crate::hosts::run("ip", &["link", "set", bridge, "up"]);
        let mut engine = Dockerd::start(
            &[],
            &[
                "--storage-driver",
                storage_driver,
                "--bridge",
                bridge,
                "--iptables=false",
                "--ip-masq=false",
                "--default-address-pool",
                "base=10.213.0.0/16,size=24",
            ],
        );
        engine.bridge = Some(bridge);
        engine
    }

    fn start(enter: &[&str], options: &[&str]) -> Dockerd {
        // Under /var/tmp: test hosts' sshd (and so their agents) see a /tmp
        // of their own, and the socket must be visible to them.
        let dir = tempfile::Builder::new()
            .prefix("gantry-dockerd-")
            .tempdir_in("/var/tmp")
            .expect("create the engine's directory");
        crate::hosts::chmod(dir.path(), 0o755);
        let path = |name: &str| dir.path().join(name).display().to_string();
        // Its own (empty) config: the system's names the system's data root.
        std::fs::write(dir.path().join("daemon.json"), "{}").expect("write daemon.json");
        let mut command = match enter.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg("dockerd");
                command
            }
            None => Command::new("dockerd"),
        };
        let daemon = command
            .args(["--config-file", &path("daemon.json")])
            .args(["--data-root", &path("data"), "--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["--host", &format!("unix://{}", path("docker.sock"))])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log")).expect("create the log"))
            .spawn()
            .expect("start dockerd");
        let engine = Dockerd {
            dir,
            daemon,
            bridge: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine
            .command(&["info"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    /// Its socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `DOCKER_HOST` for it: `unix:///…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `docker ARGS` on this engine.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.args(args).env("DOCKER_HOST", self.host());
        command
    }

    /// `docker ARGS` on this engine, which must succeed: its stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("run docker");
        assert!(
            output.status.success(),
            "docker {} on {}: {}",
            args.join(" "),
            self.host(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Copies `image` from the machine's engine (`docker save | docker load`).
    pub fn load_from_machine(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let loaded = self
            .command(&["load", "-q"])
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .expect("docker load");
        assert!(loaded.status.success(), "{loaded:?}");
        assert!(save.wait().expect("docker save").success());
    }

    /// The directory holding its data root, for sizes.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Gives each of `hosts` `gantry` (at ~/.gantry/bin) and a Docker Engine
/// of its own in its namespace, which its agent reaches: its user in the
/// group `docker`, `DOCKER_HOST` in its SSH sessions. Drop the engines
/// before the hosts (the hosts' drop kills what runs in their namespaces).
pub fn engines_for(hosts: &mut crate::hosts::TestHosts, gantry: &Path) -> Vec<Dockerd> {
    hosts
        .hosts
        .iter_mut()
        .map(|host| {
            host.install_gantry(gantry);
            host.join_docker_group();
            let engine = Dockerd::in_namespace(&host.namespace);
            host.set_session_env("DOCKER_HOST", &engine.host());
            engine
        })
        .collect()
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(out) = self.command(&["ps", "-aq"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.command(&args).output();
            }
        }
        // SIGTERM, so dockerd unmounts its layers before the directory goes.
        let _ = Command::new("kill")
            .arg(self.daemon.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        if let Some(bridge) = self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
        }
    }
}
