//! `docker build` of a service's image on the user's machine. The context
//! and the Dockerfile must lie inside the project: gantry.toml's schema
//! refuses `..` and absolute paths, and this checks the real paths (a
//! symlink may point anywhere) before Docker reads a byte.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::resolve::ImageBuild;
use crate::{Code, Error};

/// The build's context and Dockerfile as real paths inside `project`.
pub fn check_paths(
    project: &Path,
    service: &str,
    build: &ImageBuild,
) -> Result<(PathBuf, PathBuf), Error> {
    let root = project
        .canonicalize()
        .map_err(Error::io("read the project", project))?;
    let invalid = |message: String, hint: String| Error::Image {
        code: Code::BuildInvalid,
        message,
        hint,
    };
    let inside = |written: &Path, key: &str| -> Result<PathBuf, Error> {
        let path = root.join(written);
        let real = path.canonicalize().map_err(|e| {
            invalid(
                format!(
                    "the `{key}` of `{service}`'s build, {}, cannot be read: {e}",
                    path.display()
                ),
                format!(
                    "create it, or set `build.{key}` of [services.{service}] to a path inside the project"
                ),
            )
        })?;
        if !real.starts_with(&root) {
            return Err(invalid(
                format!(
                    "the `{key}` of `{service}`'s build, {}, leads outside the project (to {})",
                    path.display(),
                    real.display()
                ),
                "keep the build's files inside the project: Docker would read what the symlink points at".to_owned(),
            ));
        }
        Ok(real)
    };
    let context = inside(Path::new(&build.context), "context")?;
    if !context.is_dir() {
        return Err(invalid(
            format!(
                "the `context` of `{service}`'s build, {}, is not a directory",
                context.display()
            ),
            "name the directory Docker builds from, like context = \".\"".to_owned(),
        ));
    }
    let dockerfile = inside(&build.dockerfile_path(), "dockerfile")?;
    if !dockerfile.is_file() {
        return Err(invalid(
            format!(
                "the `dockerfile` of `{service}`'s build, {}, is not a file",
                dockerfile.display()
            ),
            "name the Dockerfile relative to the context, like dockerfile = \"Dockerfile\""
                .to_owned(),
        ));
    }
    Ok((context, dockerfile))
}

/// Builds `image` from `build` in `project`; Docker's output goes to
/// stderr as it comes, as a build command's does.
pub fn build(project: &Path, service: &str, image: &str, build: &ImageBuild) -> Result<(), Error> {
    let (context, dockerfile) = check_paths(project, service, build)?;
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("build"),
        OsStr::new("--tag"),
        OsStr::new(image),
        OsStr::new("--file"),
        dockerfile.as_os_str(),
    ];
    if let Some(target) = &build.target {
        args.extend([OsStr::new("--target"), OsStr::new(target)]);
    }
    let pairs: Vec<String> = build
        .args
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    for pair in &pairs {
        args.extend([OsStr::new("--build-arg"), OsStr::new(pair)]);
    }
    args.push(context.as_os_str());
    // Docker's output is the user's to read: it goes to stderr as it comes.
    let status = super::docker(&args, project)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(super::spawn_error)?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::BuildFailed {
            service: service.to_owned(),
            command: crate::config::resolve::Build::Image(build.clone()).describe(),
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(context: &str, dockerfile: &str) -> ImageBuild {
        ImageBuild {
            context: context.to_owned(),
            dockerfile: dockerfile.to_owned(),
            target: None,
            args: Default::default(),
        }
    }

    #[test]
    fn the_context_and_dockerfile_must_exist_inside_the_project() {
        let project = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(project.path().join("web")).expect("mkdir");
        std::fs::write(project.path().join("web/Dockerfile"), "FROM scratch\n").expect("write");
        std::os::unix::fs::symlink(outside.path(), project.path().join("escape")).expect("link");

        let (context, dockerfile) =
            check_paths(project.path(), "web", &build("web", "Dockerfile")).expect("valid");
        assert!(context.ends_with("web") && dockerfile.ends_with("web/Dockerfile"));

        let refused = |b: ImageBuild| {
            let error = check_paths(project.path(), "web", &b).expect_err("refused");
            assert_eq!(error.code(), Code::BuildInvalid);
            error.to_string()
        };
        assert!(refused(build("api", "Dockerfile")).contains("`context` of `web`'s build"));
        assert!(refused(build("web", "Missing.Dockerfile")).contains("`dockerfile`"));
        assert!(refused(build("escape", "Dockerfile")).contains("leads outside the project"));
        assert!(refused(build(".", "web")).contains("is not a file"));
    }
}
