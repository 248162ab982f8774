//! Images without a registry, on the user's side: `build` builds a
//! service's image with `docker build` (the `build = { context, dockerfile }`
//! form of gantry.toml), `ship` sends each host the layers it lacks, and
//! `archive` is the format both ends share. Only this module runs `docker`
//! on the user's machine.

pub mod archive;
mod build;
mod ship;

pub use build::{build, check_paths};
pub use ship::{Shipment, is_pinned, pinned_tag};

use std::path::Path;

use crate::{Code, Error};

/// The `docker` command on this machine.
const DOCKER: &str = "docker";

/// `docker ARGS` in `dir`, reading nothing.
fn docker(args: &[&std::ffi::OsStr], dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(DOCKER);
    command
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    command
}

/// What running `docker` failed with: a missing `docker` is `docker.missing`.
fn spawn_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => docker_missing(),
        _ => Error::io("run", DOCKER)(e),
    }
}

fn docker_missing() -> Error {
    Error::Image {
        code: Code::DockerMissing,
        message: "this machine has no `docker` command: building an image needs it".to_owned(),
        hint: "install Docker (Debian: `apt-get install docker.io`) and start it, or build the image elsewhere and give `image` alone".to_owned(),
    }
}
