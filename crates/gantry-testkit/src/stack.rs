//! `examples/stack` as a test project: its files copied as they are into a
//! `TestProject`, the images it names made from the test images (no
//! registry answers here), and everything it leaves in Docker removed on
//! drop. Shared by the stack tests and the stack bench.
//!
//! Two renames keep parallel runs apart, since Docker's names are global:
//! the project (`name = "stack"`) and the web image's tag (`stack-web`).
//! Nothing else of the example changes.

use std::path::Path;
use std::process::Command;

use crate::{TestProject, images, workspace_root};

/// The example's files, relative to `examples/stack`.
pub const FILES: [&str; 5] = [
    "gantry.toml",
    "web/Dockerfile",
    "web/app.py",
    "web/VERSION",
    "worker.sh",
];

/// The test value of the example's one secret.
pub const PASSWORD: &str = "pw-7Rk2-stack-example";

/// The images the example names, made from the test images: the Debian base
/// as `debian:bookworm-slim` (web's `FROM`), Debian's PostgreSQL 15 as
/// `postgres:15` and Debian's Redis 7 as `redis:7`. They read the same
/// variables and files as the official images for what the example uses
/// (`POSTGRES_PASSWORD_FILE`, `POSTGRES_DB`, `PGDATA`, port 5432; 6379).
/// On a machine that has the official images, these tags take their
/// names (`docker pull` gives them back).
pub fn images() {
    images::debian_slim();
    images::tag_as(&images::postgres(), "postgres:15");
    images::tag_as(&images::redis(), "redis:7");
}

/// The example deployed as project `name` by `gantry` (the binary's path),
/// its proxy on 127.0.0.1:`proxy_port`, its secret in the CLI's environment.
pub struct Stack {
    pub project: TestProject,
    pub name: String,
    pub proxy_port: u16,
    gantry: std::path::PathBuf,
}

impl Stack {
    /// Copies the example (calls [`images`] first).
    pub fn new(gantry: &Path, name: &str, proxy_port: u16) -> Stack {
        images();
        let example = workspace_root().join("examples/stack");
        let mut project = TestProject::new(gantry)
            .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{proxy_port}"))
            .env("POSTGRES_PASSWORD", PASSWORD);
        for file in FILES {
            let text = std::fs::read_to_string(example.join(file))
                .unwrap_or_else(|e| panic!("read examples/stack/{file}: {e}"));
            let text = if file == "gantry.toml" {
                rename(&text, name)
            } else {
                text
            };
            project = project.file(file, &text);
        }
        Stack {
            project,
            name: name.to_owned(),
            proxy_port,
            gantry: gantry.to_owned(),
        }
    }

    /// Adds the environment `prod` of every host of `hosts` (`[hosts.hN]`,
    /// reached over SSH with their config).
    pub fn on_hosts(&mut self, hosts: &crate::hosts::TestHosts) {
        let names: Vec<&str> = hosts.hosts.iter().map(|h| h.name.as_str()).collect();
        self.edit_config(|toml| {
            let mut toml = toml.to_owned();
            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            toml.push_str(&format!(
                "\n[environments.prod]\nhosts = [{}]\n",
                quoted.join(", ")
            ));
            for name in &names {
                toml.push_str(&format!("\n[hosts.{name}]\nssh = \"{name}\"\n"));
            }
            toml
        });
        self.project
            .set_env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string());
    }

    /// Turns the verify window off (`[deploy] verify = "0s"`), for tests
    /// whose subject is something else: the window would only add its 5 s
    /// to every deploy (agent_deploy tests the window itself).
    pub fn skip_verify_window(&self) {
        self.edit_config(|toml| format!("{toml}\n[deploy]\nverify = \"0s\"\n"));
    }

    /// The binary the project runs.
    pub fn gantry(&self) -> &Path {
        &self.gantry
    }

    /// The web service's host name on the proxy.
    pub fn web_host(&self) -> String {
        format!("web.{}.localhost", self.name)
    }

    /// The tag the web image is built as.
    pub fn web_image(&self) -> String {
        format!("{}-web", self.name)
    }

    /// Writes web's VERSION, so the next deploy builds a new image.
    pub fn set_version(&self, version: &str) {
        std::fs::write(
            self.project.path().join("web/VERSION"),
            format!("{version}\n"),
        )
        .expect("write web/VERSION");
    }

    /// Rewrites the project's gantry.toml with `edit` applied to it.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let path = self.project.path().join("gantry.toml");
        let text = std::fs::read_to_string(&path).expect("read gantry.toml");
        std::fs::write(&path, edit(&text)).expect("write gantry.toml");
    }

    /// `POST /visits` through the proxy: the status and the body.
    pub fn visit(&self) -> std::io::Result<(u16, String)> {
        crate::http_request_host(self.proxy_port, &self.web_host(), "POST", "/visits")
    }

    /// The project's running containers: (id, service, instance, release),
    /// from their labels, sorted by service.
    pub fn containers(&self) -> Vec<Container> {
        let output = Command::new("docker")
            .args([
                "ps",
                "--no-trunc",
                "--filter",
                &format!("label=dev.gantry.project={}", self.name),
                "--format",
                "{{.ID}} {{.Label \"dev.gantry.service\"}} {{.Label \"dev.gantry.instance\"}} {{.Label \"dev.gantry.release\"}}",
            ])
            .output()
            .expect("run docker ps");
        assert!(output.status.success(), "docker ps failed");
        let mut found: Vec<Container> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(' ').map(str::to_owned);
                Some(Container {
                    id: parts.next()?,
                    service: parts.next()?,
                    instance: parts.next()?,
                    release: parts.next()?,
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        found
    }
}

/// One running container of the project, as its labels say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub release: String,
}

/// The example's gantry.toml for project `name`.
fn rename(toml: &str, name: &str) -> String {
    assert!(
        toml.contains("name = \"stack\"") && toml.contains("stack-web"),
        "examples/stack/gantry.toml no longer names project `stack` and image `stack-web`"
    );
    toml.replace("name = \"stack\"", &format!("name = \"{name}\""))
        .replace("stack-web", &format!("{name}-web"))
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The project's services stop first (TestProject's drop would, but
        // only after this one removed what they run on).
        if self.project.state_dir().join("agent.sock").exists() {
            let _ = self.project.gantry(&["stop"]);
        }
        let label = format!("label=dev.gantry.project={}", self.name);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        quiet(&["network", "rm", &format!("gantry-{}-local", self.name)]);
        quiet(&[
            "volume",
            "rm",
            "-f",
            &format!("gantry-{}-local-pgdata", self.name),
        ]);
        quiet(&["image", "rm", &self.web_image()]);
    }
}
