//! A real server for tests, on this machine: a Docker container whose PID 1
//! is systemd, with sshd, reachable over SSH as root with a test key at its
//! own address on Docker's bridge. What `gantry configure` does as root on a
//! systemd host (a system user, a unit, /var/lib/gantry) runs there for real
//! and never touches this machine.
//!
//! No image can be pulled here, so the image (`gantry-test-systemd:bookworm`)
//! is imported from a root filesystem that `debootstrap` builds, both cached
//! (`rootfs::Rootfs`).
//!
//! Needs root, Docker and debootstrap. The container is removed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::hosts::{keygen, run, s};
use crate::rootfs::{self, Rootfs};

/// The image every systemd host runs.
pub const IMAGE: &str = "gantry-test-systemd:bookworm";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub struct SystemdHost {
    /// The key, the ssh config and known_hosts; removed on drop.
    dir: tempfile::TempDir,
    /// The name in the ssh config (and in gantry.toml).
    pub name: String,
    /// The Docker container's name.
    pub container: String,
    /// The container's address on Docker's bridge.
    pub address: Ipv4Addr,
    /// An OpenSSH client config naming the host (`GANTRY_SSH_CONFIG`).
    pub ssh_config: PathBuf,
    /// The private half of the key root on the host accepts.
    pub key: PathBuf,
}

impl SystemdHost {
    /// Boots a systemd host named `name` (building its image first if no
    /// cache has it). Panics with what is missing when it cannot.
    pub fn start(name: &str) -> SystemdHost {
        preflight();
        remove_orphans();
        ROOTFS.ensure_image();

        let dir = tempfile::Builder::new()
            .prefix("gantry-systemd-host-")
            .tempdir()
            .expect("create the host's directory");
        let key = dir.path().join("id_test");
        keygen(&key, "");
        let container = format!(
            "gantry-sd-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::SeqCst)
        );
        eprintln!("systemd host {name}: starting container {container}");
        // systemd as PID 1 in a container on cgroup v1: the cgroup tree
        // writable (it makes its own slices under the container's cgroup),
        // /run and /run/lock on tmpfs, and `container=docker` so units that
        // make no sense in a container (gettys, udev) stay off. Every
        // capability but CAP_SYS_RESOURCE rather than --privileged: where
        // Docker itself runs without that one, --privileged cannot start.
        run(
            "docker",
            &[
                "run",
                "-d",
                "--cap-add",
                "ALL",
                "--cap-drop",
                "SYS_RESOURCE",
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "apparmor=unconfined",
                "--name",
                &container,
                "--label",
                &format!("gantry-test-pidns={}", owner().0),
                "--hostname",
                name,
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "-e",
                "container=docker",
                "--stop-signal",
                "SIGRTMIN+3",
                IMAGE,
                "/sbin/init",
            ],
        );
        let mut host = SystemdHost {
            ssh_config: dir.path().join("ssh_config"),
            key,
            dir,
            name: name.to_owned(),
            container,
            address: Ipv4Addr::UNSPECIFIED,
        };
        host.wait_booted();
        host.authorize_key();
        host.address = host.read_address();
        std::fs::write(
            &host.ssh_config,
            format!(
                "Host {name}\n  HostName {address}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking accept-new\n",
                address = host.address,
                key = host.key.display(),
                known = host.dir.path().join("known_hosts").display(),
            ),
        )
        .expect("write the ssh config");
        host.wait_for_ssh();
        host
    }

    /// Runs a command inside the container (as root, not over SSH).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["exec", &self.container])
            .args(args)
            .output()
            .expect("run docker exec")
    }

    /// Runs a command inside the container; its stdout, trimmed. Panics
    /// with its stderr when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.exec(args);
        assert!(
            output.status.success(),
            "`{}` on {} failed: {}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The host's `port`, as this machine reaches it (for `http_get_at`).
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.address, port))
    }

    /// Polls until systemd has finished booting (`running`, or `degraded`
    /// when a unit failed: a container has units that cannot start).
    fn wait_booted(&self) {
        let started = Instant::now();
        loop {
            let output = self.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                if state == "degraded" {
                    let failed = self.exec(&["systemctl", "--failed", "--no-legend"]);
                    eprintln!(
                        "systemd host {}: degraded: {}",
                        self.name,
                        String::from_utf8_lossy(&failed.stdout).trim()
                    );
                }
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let logs = Command::new("docker")
                    .args(["logs", "--tail", "50", &self.container])
                    .output()
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default();
                panic!(
                    "systemd in {} did not finish booting (`{state}`): {logs}",
                    self.container
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn authorize_key(&self) {
        let public =
            std::fs::read_to_string(self.key.with_extension("pub")).expect("read the test key");
        let script = format!(
            "install -d -m 700 /root/.ssh && printf '%s\\n' '{}' > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys && systemctl start ssh",
            public.trim()
        );
        self.exec_ok(&["sh", "-c", &script]);
    }

    fn read_address(&self) -> Ipv4Addr {
        let output = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &self.container,
            ])
            .output()
            .expect("run docker inspect");
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().unwrap_or_else(|e| {
            panic!(
                "{} has no address on Docker's bridge (`{}`): {e}",
                self.container,
                text.trim()
            )
        })
    }

    /// Polls until root logs in over SSH with the test key.
    fn wait_for_ssh(&self) {
        let started = Instant::now();
        loop {
            let output = Command::new("ssh")
                .args(["-F", &s(&self.ssh_config), "-o", "BatchMode=yes"])
                .args(["-o", "ConnectTimeout=2", &self.name, "true"])
                .stdin(Stdio::null())
                .output()
                .expect("run ssh");
            if output.status.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cannot log in to {} over SSH: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Panics naming the first thing this machine lacks to run systemd hosts.
fn preflight() {
    rootfs::preflight_docker();
    for tool in ["/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install openssh-client"
        );
    }
    // The container gets this machine's cgroup tree, writable: right on
    // cgroup v1 (systemd makes its slices under the container's own cgroup),
    // wrong on v2, where it would manage this machine's root cgroup.
    assert!(
        !Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "this machine runs cgroup v2: the systemd host test is written for cgroup v1 (see SystemdHost::start)"
    );
}

/// Who started a container: this process's pid namespace and pid, so that
/// only containers of ended processes of this namespace count as left over
/// (another namespace's pids mean nothing here).
fn owner() -> (String, u32) {
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (namespace, std::process::id())
}

/// Removes the containers of test processes that died before their drop
/// (`gantry-sd-<pid>-<n>` whose pid no longer runs).
fn remove_orphans() {
    let (namespace, _) = owner();
    let Ok(output) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "name=gantry-sd-",
            "--filter",
            &format!("label=gantry-test-pidns={namespace}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&output.stdout).lines() {
        let pid = name
            .strip_prefix("gantry-sd-")
            .and_then(|rest| rest.split('-').next());
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The root filesystem: debootstrap's minimal base with systemd and sshd.
const ROOTFS: Rootfs = Rootfs {
    image: IMAGE,
    packages: "systemd,systemd-sysv,dbus,openssh-server,iproute2,procps,ufw,nftables,iptables,ca-certificates",
    prepare: prepare_rootfs,
    cmd: "/sbin/init",
};

/// What a container needs beside the packages: a machine id made at boot,
/// a root that logs in with a key only.
fn prepare_rootfs(rootfs: &Path) {
    std::fs::write(rootfs.join("etc/machine-id"), "").expect("empty /etc/machine-id");
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    std::fs::write(
        rootfs.join("etc/ssh/sshd_config.d/gantry-test.conf"),
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
    )
    .expect("write the test's sshd config");
}
