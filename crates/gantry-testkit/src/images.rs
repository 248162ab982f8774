//! Real Docker images for tests, on a machine that reaches no registry: a
//! Debian bookworm base imported from a `debootstrap` root filesystem
//! (`rootfs::Rootfs`), then `docker build` on it, installing Debian's
//! packages (build containers reach Debian's mirrors). PostgreSQL, MariaDB
//! and Redis are Debian's own servers.
//!
//! Every image is cached by content: its tag is `gantry-test-NAME:HASH`,
//! where HASH covers the build context and the base image's id, so a
//! repeated run reuses it and any change of a Dockerfile, of a file beside
//! it or of the base builds anew (and removes the stale tags of NAME). A
//! lock per name keeps two test processes from building the same image.
//!
//! Needs root, Docker and debootstrap (for the base, once).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::rootfs::{self, Rootfs};

/// The base of every test image: debootstrap's minimal bookworm.
pub const BASE: &str = "gantry-test-debian:bookworm";

/// What an image needs beside debootstrap's base: packages installed in a
/// build never start their services (there is no init to run them), and
/// apt installs no recommends and keeps no caches.
fn prepare_base(rootfs: &Path) {
    let policy = rootfs.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n").expect("write policy-rc.d");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
        .expect("make policy-rc.d executable");
    std::fs::write(
        rootfs.join("etc/apt/apt.conf.d/90gantry-test"),
        "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n",
    )
    .expect("write the apt config");
}

/// The base image's root filesystem: debootstrap's minimal base alone.
const BASE_ROOTFS: Rootfs = Rootfs {
    image: BASE,
    packages: "",
    prepare: prepare_base,
    cmd: "/bin/bash",
};

/// The base image's tag, importing it first if Docker lacks it.
pub fn base() -> &'static str {
    rootfs::preflight_docker();
    BASE_ROOTFS.ensure_image();
    BASE
}

/// The tag of Docker's official Debian image that Dockerfiles written for
/// users start `FROM` (the examples' do).
pub const DEBIAN_SLIM: &str = "debian:bookworm-slim";

/// The base image, also tagged `debian:bookworm-slim` (no registry answers
/// here to pull the real one), so a Dockerfile written for users builds on
/// this machine unchanged. Returns that tag.
pub fn debian_slim() -> &'static str {
    tag_as(base(), DEBIAN_SLIM);
    DEBIAN_SLIM
}

/// Tags `image` also as `name` (like `postgres:15`), unless `name` already
/// is that image. For configs written for users, naming the official
/// images, to run on test images that behave alike.
pub fn tag_as(image: &str, name: &str) {
    if rootfs::image_exists(name) && image_id(name) == image_id(image) {
        return;
    }
    let status = Command::new("docker")
        .args(["tag", image, name])
        .status()
        .expect("run docker tag");
    assert!(status.success(), "docker tag {image} {name} failed");
}

/// busybox's httpd answering `version $VERSION` on `$PORT`.
pub fn busybox_web() -> String {
    build(
        "busybox-web",
        &[(
            "Dockerfile",
            "FROM gantry-test-debian:bookworm\n\
             RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y busybox \\\n \
             && rm -rf /var/lib/apt/lists/*\n\
             CMD [\"sh\", \"-c\", \"mkdir -p /tmp/www && echo \\\"version $VERSION\\\" > /tmp/www/index.html && exec busybox httpd -f -p \\\"$PORT\\\" -h /tmp/www\"]\n",
        )],
    )
}

/// Redis from Debian (`redis-server`, `redis-cli`), as user `redis`,
/// listening on 6379 on every address, with its append-only file in
/// /var/lib/redis (mount a volume there to keep data).
pub fn redis() -> String {
    build(
        "redis",
        &[(
            "Dockerfile",
            "FROM gantry-test-debian:bookworm\n\
             RUN apt-get update \\\n \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server \\\n \
             && rm -rf /var/lib/apt/lists/*\n\
             USER redis\n\
             WORKDIR /var/lib/redis\n\
             EXPOSE 6379\n\
             CMD [\"redis-server\", \"--bind\", \"0.0.0.0\", \"--protected-mode\", \"no\", \"--dir\", \"/var/lib/redis\", \"--appendonly\", \"yes\"]\n",
        )],
    )
}

/// Sends one Redis inline command to the Redis listening on
/// 127.0.0.1:`port` (an `images::redis()` container's published port);
/// its first reply line (`+PONG`, `:42`, `$2`, `-ERR ...`).
pub fn redis_command(port: u16, command: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buffer = [0u8; 512];
    let n = stream.read(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// PostgreSQL 15 from Debian, as user `postgres`, listening on 5432. On its
/// first start it initializes `/var/lib/postgresql/data` with the superuser
/// `POSTGRES_USER` (default `postgres`) whose password is
/// `POSTGRES_PASSWORD` or the contents of the file `POSTGRES_PASSWORD_FILE`,
/// and creates `POSTGRES_DB` when set.
pub fn postgres() -> String {
    build(
        "postgres",
        &[
            (
                "Dockerfile",
                "FROM gantry-test-debian:bookworm\n\
                 RUN mkdir -p /etc/postgresql-common/createcluster.d \\\n \
                 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/gantry.conf \\\n \
                 && apt-get update \\\n \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15 \\\n \
                 && rm -rf /var/lib/apt/lists/* \\\n \
                 && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \\\n \
                 && install -d -o postgres -g postgres -m 2775 /run/postgresql\n\
                 COPY entrypoint.sh /usr/local/bin/gantry-postgres\n\
                 ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\\n    \
                 PGDATA=/var/lib/postgresql/data\n\
                 USER postgres\n\
                 EXPOSE 5432\n\
                 ENTRYPOINT [\"/usr/local/bin/gantry-postgres\"]\n",
            ),
            ("entrypoint.sh", POSTGRES_ENTRYPOINT),
        ],
    )
}

const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
# Initializes $PGDATA on the first start, then runs PostgreSQL in the foreground.
set -eu
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ -n "${POSTGRES_DB:-}" ]; then
    case "$POSTGRES_DB" in
      *[!a-zA-Z0-9_]*) echo "POSTGRES_DB may hold letters, digits and _ only" >&2; exit 1 ;;
    esac
    echo "CREATE DATABASE $POSTGRES_DB" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" "$@"
"#;

/// MariaDB from Debian, listening on 3306. On its first start it
/// initializes /var/lib/mysql with `root` (from anywhere) whose password is
/// `MARIADB_ROOT_PASSWORD` or the contents of `MARIADB_ROOT_PASSWORD_FILE`,
/// and creates `MARIADB_DATABASE` when set.
pub fn mariadb() -> String {
    build(
        "mariadb",
        &[
            (
                "Dockerfile",
                "FROM gantry-test-debian:bookworm\n\
                 RUN apt-get update \\\n \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server \\\n \
                 && rm -rf /var/lib/apt/lists/* /var/lib/mysql \\\n \
                 && install -d -o mysql -g mysql -m 750 /var/lib/mysql \\\n \
                 && install -d -o mysql -g mysql -m 755 /run/mysqld\n\
                 COPY entrypoint.sh /usr/local/bin/gantry-mariadb\n\
                 USER mysql\n\
                 EXPOSE 3306\n\
                 ENTRYPOINT [\"/usr/local/bin/gantry-mariadb\"]\n",
            ),
            ("entrypoint.sh", MARIADB_ENTRYPOINT),
        ],
    )
}

const MARIADB_ENTRYPOINT: &str = r#"#!/bin/sh
# Initializes /var/lib/mysql on the first start, then runs MariaDB in the foreground.
set -eu
if [ -n "${MARIADB_ROOT_PASSWORD_FILE:-}" ]; then
  MARIADB_ROOT_PASSWORD=$(cat "$MARIADB_ROOT_PASSWORD_FILE")
fi
if [ ! -d /var/lib/mysql/mysql ]; then
  : "${MARIADB_ROOT_PASSWORD:?set MARIADB_ROOT_PASSWORD or MARIADB_ROOT_PASSWORD_FILE}"
  mariadb-install-db --datadir=/var/lib/mysql --auth-root-authentication-method=normal \
    --skip-test-db >/dev/null
  password=$(printf '%s' "$MARIADB_ROOT_PASSWORD" | sed "s/\\\\/\\\\\\\\/g; s/'/''/g")
  {
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$password';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$password';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      case "$MARIADB_DATABASE" in
        *[!a-zA-Z0-9_]*) echo "MARIADB_DATABASE may hold letters, digits and _ only" >&2; exit 1 ;;
      esac
      echo "CREATE DATABASE $MARIADB_DATABASE;"
    fi
  } | mariadbd --bootstrap --datadir=/var/lib/mysql --log-warnings=0 >/dev/null
fi
exec mariadbd --datadir=/var/lib/mysql --bind-address=0.0.0.0 --port=3306 "$@"
"#;

/// Builds (or finds cached) the image `gantry-test-NAME` from a build
/// context given as files (one named `Dockerfile`, `FROM` the base), and
/// returns its tag. Panics with the build's output when it fails.
pub fn build(name: &str, files: &[(&str, &str)]) -> String {
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "image name `{name}`: use lowercase letters, digits and -"
    );
    assert!(
        files.iter().any(|(path, _)| *path == "Dockerfile"),
        "image {name}: the build context has no Dockerfile"
    );
    base();
    let tag = format!(
        "gantry-test-{name}:{}",
        context_hash(&image_id(BASE), files)
    );
    if rootfs::image_exists(&tag) {
        return tag;
    }
    eprintln!("{tag}: waiting for the image build lock");
    let _lock = rootfs::lock(&format!("image-{name}"));
    if rootfs::image_exists(&tag) {
        return tag;
    }
    let context = tempfile::Builder::new()
        .prefix("gantry-test-image-")
        .tempdir()
        .expect("create the build context");
    for (path, contents) in files {
        let to = context.path().join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("create the context's directories");
        }
        std::fs::write(&to, contents).expect("write the build context");
        // COPY keeps the mode: scripts are executable.
        let mode = if path.ends_with(".sh") { 0o755 } else { 0o644 };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
            .expect("set the context file's mode");
    }
    eprintln!("{tag}: building (apt-get inside; takes a minute or more, once)");
    let output = Command::new("docker")
        .args(["build", "--label", "gantry-test=1", "-t", &tag])
        .arg(context.path())
        .stdin(Stdio::null())
        .output()
        .expect("run docker build");
    assert!(
        output.status.success(),
        "docker build of {tag} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    remove_stale_tags(name, &tag);
    tag
}

/// The image's id (`sha256:...`), which changes when it is built anew.
pub fn image_id(image: &str) -> String {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .expect("run docker image inspect");
    assert!(
        output.status.success(),
        "no image {image}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A hash of the base image and of the context's files, their paths and
/// contents framed so that no two contexts hash alike.
fn context_hash(base_id: &str, files: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = files.to_vec();
    sorted.sort();
    let mut hasher = Sha256::new();
    hasher.update(base_id.as_bytes());
    for (path, contents) in sorted {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(contents.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::new();
    for byte in &digest[..6] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Removes every other tag of `gantry-test-NAME`: builds of older contexts.
fn remove_stale_tags(name: &str, keep: &str) {
    let Ok(output) = Command::new("docker")
        .args([
            "image",
            "ls",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &format!("gantry-test-{name}"),
        ])
        .output()
    else {
        return;
    };
    for tag in String::from_utf8_lossy(&output.stdout).lines() {
        if tag != keep {
            let _ = Command::new("docker")
                .args(["image", "rm", tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::context_hash;

    #[test]
    fn a_context_hash_changes_with_any_file_and_not_with_their_order() {
        let a = context_hash("sha256:1", &[("Dockerfile", "FROM x"), ("a", "1")]);
        assert_eq!(
            a,
            context_hash("sha256:1", &[("a", "1"), ("Dockerfile", "FROM x")])
        );
        assert_ne!(
            a,
            context_hash("sha256:1", &[("Dockerfile", "FROM x"), ("a", "2")])
        );
        assert_ne!(
            a,
            context_hash("sha256:2", &[("Dockerfile", "FROM x"), ("a", "1")])
        );
        // Framed: moving a byte between path and contents is another context.
        assert_ne!(
            context_hash("b", &[("ab", "c")]),
            context_hash("b", &[("a", "bc")])
        );
    }
}
