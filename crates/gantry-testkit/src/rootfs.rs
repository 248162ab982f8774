//! Docker images imported from a Debian root filesystem that `debootstrap`
//! builds, for tests on a machine that reaches no registry. Both are cached:
//! the image in Docker, the root filesystem as a tarball in
//! /var/cache/gantry-test; a lock file per root filesystem keeps two tests
//! from building it at once. The systemd host and the test images' base
//! (`images::base`) are two `Rootfs`.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::hosts::{run, s};

/// Where root filesystem tarballs and build locks are kept between runs.
pub(crate) const CACHE: &str = "/var/cache/gantry-test";

/// One imported root filesystem: what debootstrap installs, how the tree is
/// finished, and the image it becomes.
pub(crate) struct Rootfs {
    /// The image tag, `gantry-test-<name>:<tag>`; the cache's tarball and
    /// lock are `<name>-<tag>` ([`Rootfs::stem`]).
    pub image: &'static str,
    /// Packages beside debootstrap's minimal base, comma-separated.
    pub packages: &'static str,
    /// Run on the tree after debootstrap, before it is packed.
    pub prepare: fn(&Path),
    /// The image's command (its `CMD`).
    pub cmd: &'static str,
}

/// Panics naming what this machine lacks to build or run test images.
pub(crate) fn preflight_docker() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests with Docker images run debootstrap and containers: run them as root (CI does)"
    );
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match docker {
        Err(e) => panic!("docker is missing ({e}): install Docker (apt-get install docker.io)"),
        Ok(output) if !output.status.success() => panic!(
            "the Docker engine does not answer: {}start it (e.g. `service docker start`)",
            String::from_utf8_lossy(&output.stderr)
        ),
        Ok(_) => {}
    }
}

pub(crate) fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Takes the cache's lock named `name` (blocking), creating the cache.
pub(crate) fn lock(name: &str) -> File {
    let cache = Path::new(CACHE);
    std::fs::create_dir_all(cache).expect("create /var/cache/gantry-test");
    let lock = File::create(cache.join(format!("{name}.lock"))).expect("create the build lock");
    lock.lock().expect("take the build lock");
    lock
}

impl Rootfs {
    /// The image, from Docker's cache, else from the cached root
    /// filesystem, else built with debootstrap. One builder at a time: the
    /// others wait on the lock and find the image made.
    pub(crate) fn ensure_image(&self) {
        if image_exists(self.image) {
            return;
        }
        let stem = self.stem();
        eprintln!("{}: waiting for the image build lock", self.image);
        let _lock = lock(&stem);
        if image_exists(self.image) {
            return;
        }
        let tarball = Path::new(CACHE).join(format!("{stem}.tar"));
        if !tarball.exists() {
            self.build(&tarball);
        }
        eprintln!("importing {} as {}", tarball.display(), self.image);
        let cmd = format!("CMD [\"{}\"]", self.cmd);
        run(
            "docker",
            &["import", "--change", &cmd, &s(&tarball), self.image],
        );
    }

    /// The name of the cached tarball and of its lock: the image's name
    /// less `gantry-test-`, and its tag (`systemd-bookworm`).
    fn stem(&self) -> String {
        let name = self.image.trim_start_matches("gantry-test-");
        name.replace(':', "-")
    }

    /// debootstrap's minimal Debian bookworm with `packages`, as a tarball
    /// at `tarball` (written under a temporary name, then renamed).
    fn build(&self, tarball: &Path) {
        assert!(
            Path::new("/usr/sbin/debootstrap").exists(),
            "debootstrap is missing, and no cached image or root filesystem exists: apt-get install debootstrap"
        );
        let stem = self.stem();
        // Under the lock, a root filesystem left in the cache is a killed build's.
        if let Ok(entries) = std::fs::read_dir(CACHE) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{stem}.rootfs."))
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let rootfs = tarball.with_extension(format!("rootfs.{}", std::process::id()));
        eprintln!(
            "{}: building a Debian bookworm root filesystem with debootstrap in {} (takes minutes, once)",
            self.image,
            rootfs.display()
        );
        let started = Instant::now();
        let mut command = Command::new("debootstrap");
        command.arg("--variant=minbase");
        if !self.packages.is_empty() {
            command.arg(format!("--include={}", self.packages));
        }
        let status = command
            .args(["bookworm", &s(&rootfs), "http://deb.debian.org/debian"])
            .stdout(Stdio::null())
            .status()
            .expect("run debootstrap");
        assert!(
            status.success(),
            "debootstrap failed (see its log in {}/debootstrap/debootstrap.log)",
            rootfs.display()
        );
        // No apt caches in an image.
        let _ = std::fs::remove_dir_all(rootfs.join("var/cache/apt/archives"));
        let _ = std::fs::remove_dir_all(rootfs.join("var/lib/apt/lists"));
        (self.prepare)(&rootfs);
        let part = tarball.with_extension("tar.part");
        eprintln!(
            "{}: debootstrap done in {:.0?}; packing {}",
            self.image,
            started.elapsed(),
            tarball.display()
        );
        run(
            "tar",
            &[
                "--numeric-owner",
                "--xattrs",
                "-C",
                &s(&rootfs),
                "-cf",
                &s(&part),
                ".",
            ],
        );
        std::fs::rename(&part, tarball).expect("rename the root filesystem tarball");
        let _ = std::fs::remove_dir_all(&rootfs);
    }
}
